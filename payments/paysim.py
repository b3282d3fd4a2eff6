"""Both payment simulators as one server: `python server.py pay-sim` (or `python -m payments.paysim`).

    WeChat Pay v3   <base>/wechatpay/v3/...      control: <base>/wechatpay/__sim__/...
    Alipay gateway  <base>/alipay/gateway.do     control: <base>/alipay/__sim__/...
    readiness       <base>/__sim__/stats

Keys are generated at start; a merchant registers its public key through each simulator's
control API and gets the channel's public key back (see `payments/wechatpay_sim.py` and
`payments/alipay_sim.py`). `--time-scale 0.001` turns the channels' notify retry schedules
(minutes to hours) into milliseconds to seconds, for tests.
"""

from __future__ import annotations

import argparse
import logging

from sanic import Blueprint, Request, Sanic

from core import simserver
from payments.alipay_sim import AlipayState, alipay_blueprint
from payments.wechatpay_sim import KEY_MODES, WeChatPayState, wechatpay_blueprint

log = logging.getLogger("zhangban.pay_sim")
WECHATPAY_PREFIX, ALIPAY_PREFIX = "/wechatpay", "/alipay"


def create_paysim_app(wechat: WeChatPayState, alipay: AlipayState) -> Sanic:
    root = Blueprint("paysim_root")

    def stats(request: Request) -> dict:
        return {"wechatpay": WECHATPAY_PREFIX, "alipay": ALIPAY_PREFIX}

    root.add_route(simserver.control_route(stats, log=log, path="/__sim__/stats"), "/__sim__/stats", methods=["GET"])
    group = Blueprint.group(
        wechatpay_blueprint(wechat, url_prefix=WECHATPAY_PREFIX),
        alipay_blueprint(alipay, url_prefix=ALIPAY_PREFIX),
        root,
    )
    return simserver.create_app("pay_sim", group, state=(wechat, alipay), log=log)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies every notify retry delay")
    parser.add_argument("--key-mode", choices=KEY_MODES, default="public_key", help="WeChat Pay's platform key kind")


def main(argv: list[str] | None = None) -> None:
    simserver.main(
        argv,
        prog="python server.py pay-sim",
        description="WeChat Pay v3 and Alipay simulators in one server.",
        port=8703,
        options=_options,
        build=lambda args: create_paysim_app(
            WeChatPayState(key_mode=args.key_mode, time_scale=args.time_scale), AlipayState(time_scale=args.time_scale)
        ),
    )


if __name__ == "__main__":
    main()
