"""Payment channel adapters: WeChat Pay v3 and Alipay (sign, order, notify verify, refund, bills)."""
