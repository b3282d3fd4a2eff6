"""Service notices (通知公告): composed in the console, sent to an audience through the channel
each citizen can receive, listed in the mini-program and by the bot.

- `audience`: who a notice goes to (all followers of the official account, citizens with cases of
  a service, subscribers of a catalogue theme, citizens with an address in a region), counted by
  one COUNT query and streamed in keyset pages, never loaded whole.
- `notices`: the use cases of officials (compose, preview, schedule, send, cancel, progress,
  report), of citizens (published notices, theme subscriptions) and of the bot.
- `sender`: the fan-out: one delivery row per notice and recipient (unique), the WeChat message
  within the per-second rate, the inbox always, backoff on quota errors, resumable after a crash.
"""
