"""The ASGI entry point for `uvicorn app:app`; settings come from the MENDBOT_* environment."""

from bot.web import create_app

app = create_app()
