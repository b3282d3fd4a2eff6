"""好差评: citizens rate their cases, and every bad review is followed up, fixed and reported back.

tags.py      the five levels and the tags offered per level
service.py   Evaluations: rate (mini-program, official account), the default after 7 days,
             the relay to the platform, the rectification loop (citizen side, officials' steps,
             reminders and escalation)
views.py     what the citizen's case detail shows of its evaluation
"""
