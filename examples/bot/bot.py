"""A bot that answers in a room: it listens over WebSocket and answers through the HTTP API.

Its answers are published by the server (``"server": true``), so clients can
show them as the bot's, and the bot itself never answers a server message (no
loops). Run it against a chat started with an API key::

    WSCHAT_API_KEY=... wschat serve
    python -m examples.bot.bot --api-key ... [--room lobby] [--jwt-secret ...
        --jwt-audience ... --jwt-issuer ...]

With authentication on, give the chat's ``--jwt-secret``: the bot signs its own
token (it is backend code, it has the key). Needs ``websockets`` and ``httpx``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from datetime import UTC, datetime
from urllib.parse import quote

BOT = "helpbot"
_ROLL = re.compile(r"!roll\s+(\d{1,2})d(\d{1,3})$")
HELP = "commands: !help, !time, !roll NdM (e.g. !roll 2d6)"


def answer(text: str, now: float, rng: random.Random) -> str | None:
    """The bot's answer to a message, or None when it has nothing to say."""
    text = text.strip()
    if text == "!help":
        return HELP
    if text == "!time":
        return "it is " + datetime.fromtimestamp(now, UTC).strftime("%H:%M:%S UTC")
    match = _ROLL.match(text)
    if match:
        count, sides = int(match[1]), int(match[2])
        if not (1 <= count <= 20 and 2 <= sides <= 100):
            return "I roll 1-20 dice of 2-100 sides"
        rolls = [rng.randint(1, sides) for _ in range(count)]
        return f"rolled {count}d{sides}: {' + '.join(map(str, rolls))} = {sum(rolls)}"
    return None


def should_answer(event: dict[str, object]) -> str | None:
    """The text of a message event the bot should look at (not its own, not the server's)."""
    if event.get("type") != "message" or event.get("server") or event.get("username") == BOT:
        return None
    message = event.get("message")
    return message if isinstance(message, str) else None


def bot_claims(now: float, audience: str | None, issuer: str | None) -> dict[str, object]:
    """The claims of the token the bot signs for itself (an hour, like a user's)."""
    claims: dict[str, object] = {"sub": BOT, "name": "Help Bot", "iat": int(now)}
    claims["exp"] = int(now) + 3600
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return claims


async def run(
    chat: str,
    api_key: str,
    room: str,
    jwt_secret: str | None,
    audience: str | None = None,
    issuer: str | None = None,
) -> None:
    """Listen to ``room`` on the chat at ``chat`` (http://host:port) and answer, forever."""
    import httpx
    import jwt
    import websockets

    ws_url = chat.replace("http", "ws", 1) + f"/ws?room={quote(room)}&auth=message"
    post_url = f"{chat}/api/rooms/{quote(room, safe='')}/messages"
    rng = random.Random()
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {api_key}"}) as http:
        async for ws in websockets.connect(ws_url):  # reconnects with backoff
            try:
                if jwt_secret is not None:
                    claims = bot_claims(time.time(), audience, issuer)
                    token = jwt.encode(claims, jwt_secret, algorithm="HS256")
                    await ws.send(json.dumps({"type": "auth", "token": token}))
                await ws.send(json.dumps({"type": "join", "room": room, "username": BOT}))
                async for frame in ws:
                    text = should_answer(json.loads(frame))
                    reply = answer(text, time.time(), rng) if text is not None else None
                    if reply is not None:
                        body = {"username": BOT, "message": reply}
                        response = await http.post(post_url, json=body)
                        response.raise_for_status()
            except websockets.ConnectionClosed:
                continue


def main() -> None:
    """``python -m examples.bot.bot``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chat", default="http://127.0.0.1:8080")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--jwt-secret", help="the chat's key: the bot signs its own token")
    parser.add_argument("--jwt-audience", help="the chat's --jwt-audience")
    parser.add_argument("--jwt-issuer", help="the chat's --jwt-issuer")
    args = parser.parse_args()
    import anyio

    anyio.run(
        run,
        args.chat,
        args.api_key,
        args.room,
        args.jwt_secret,
        args.jwt_audience,
        args.jwt_issuer,
    )


if __name__ == "__main__":
    main()
