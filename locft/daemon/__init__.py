"""`locftd`: the process that turns accumulated facts into gated model versions on a schedule.

    cli.py      `locftd start|stop|status` (the console script)
    service.py  the daemon: lock, recovery, signals, one worker per round
    triggers.py what asks for a round (cron and the poll, on APScheduler 3) and in which order
    control.py  starting and stopping a home's daemon from another process
    worker.py   `python -m locft.daemon.worker`: one round in a child process
    logs.py     rotating log files under $LOCFT_HOME/logs

Thin shells over `locft.rounds` and `locft.store`. Nothing here imports torch except the worker.
"""
