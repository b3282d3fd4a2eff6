"""Paying a case's fee: orders at WeChat Pay or Alipay, what the channels tell us, refunds, reconciliation.

orders      a citizen's order for a fee (create, view, poll), one open order per fee
states      the order state machine: every move a conditional update with its event
settle      what a channel says about a trade (notify or query), applied exactly once
refunds     refunds of paid fees (case rejected or withdrawn, paid after close)
recovery    the sweep: ask about orders whose notify is late, close expired ones
reconcile   the daily bills against our orders (对账)
channels    the adapters the use cases are handed
"""
