"""The ASGI entry point for `uvicorn app:app`: the app is built from the MENDBOT_* environment at startup."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from bot.web import create_app


class BuiltAtStartup:
    """Reads the settings when the server starts rather than on import, so importing needs no environment."""

    def __init__(self) -> None:
        self.built: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.built is None:
            try:
                self.built = create_app()
            except Exception as exc:
                if scope["type"] != "lifespan":
                    raise
                # Refuse to start, naming the problem, rather than serve errors to every request.
                await receive()
                await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                return
        await self.built(scope, receive, send)


app = BuiltAtStartup()
