# One image for every entry point: `mendbot serve` (the default), `mendbot worker`, and the GitHub Action,
# which runs this Dockerfile with the argument `action`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MENDBOT_DATABASE_URL=sqlite:////var/lib/mendbot/mendbot.db

# uid 1001 is the runner user on GitHub-hosted runners. As a Docker action the container appends to the job
# summary and output files the runner created, which only their owner may write; a root container would
# work too, but the server should never run as root.
RUN groupadd --gid 1001 mendbot \
    && useradd --uid 1001 --gid 1001 --home-dir /var/lib/mendbot --create-home --shell /usr/sbin/nologin mendbot

COPY pyproject.toml README.md app.py /opt/mendbot/
COPY bot /opt/mendbot/bot
# The runtime dependencies and the PostgreSQL driver; the dev extras (pytest, ruff, mypy) stay out of the image.
RUN pip install "/opt/mendbot[postgres]" && rm -rf /opt/mendbot/build /opt/mendbot/*.egg-info

USER 1001:1001
EXPOSE 8000
# python, not curl: the slim image has no curl. A worker container serves no HTTP; disable this check there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["mendbot"]
CMD ["serve", "--host", "0.0.0.0"]
