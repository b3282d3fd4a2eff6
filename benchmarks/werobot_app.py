"""The WeRoBot side of benchmarks/bot.py: an official-account robot answering every text message
with one fixed text, in safe mode (encrypted), configured the way WeRoBot's documentation shows.

It runs only inside the virtual environment benchmarks/bot.py makes for it (WeRoBot 1.13.1 is not
a Zhangban dependency). Settings come from the environment the benchmark sets:

    WEROBOT_TOKEN, WEROBOT_APP_ID, WEROBOT_AES_KEY   the official account (same as Zhangban's)
    WEROBOT_REPLY                                    the fixed reply text
    WEROBOT_SESSION                                  "off": WeRoBot(enable_session=False), its fastest
                                                     configuration; otherwise its default (SQLite
                                                     sessions loaded and saved on every message)

Two documented ways to serve it (WeRoBot docs, "部署"):

    gunicorn --workers 1 --bind 127.0.0.1:PORT werobot_app:application  # "通过 WSGI HTTP Server 运行"
    python werobot_app.py --port PORT                                  # werobot.run, server "auto"

The guide writes the gunicorn target as `robot:robot.wsgi`; gunicorn 20.1 and later refuse that,
so the same WSGI application, `robot.wsgi`, is exposed under a plain name, `application`.
`robot.run()` with the default server "auto" lets Bottle pick the first importable server
(Waitress here).
"""

from __future__ import annotations

import argparse
import os

from werobot import WeRoBot

if os.environ.get("WEROBOT_SESSION") == "off":
    robot = WeRoBot(enable_session=False)
else:
    robot = WeRoBot()
robot.config.update(
    TOKEN=os.environ["WEROBOT_TOKEN"],
    APP_ID=os.environ["WEROBOT_APP_ID"],
    ENCODING_AES_KEY=os.environ["WEROBOT_AES_KEY"],
)
REPLY = os.environ.get("WEROBOT_REPLY") or "您好，这里是掌办。"


@robot.text
def answer(message):
    return REPLY


application = robot.wsgi  # the Bottle app WeRoBot builds (`robot.wsgi`), for gunicorn


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="WeRoBot on werobot.run (server 'auto' by default)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", default="auto")
    args = parser.parse_args()
    robot.run(server=args.server, host=args.host, port=args.port)
