"""The cleaning service: events.raw -> events.clean | events.deadletter (see app.py)."""
