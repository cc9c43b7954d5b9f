"""`locftd`: the process that turns accumulated facts into gated model versions on a schedule.

    cli.py      `locftd start|stop|status` (the console script)
    service.py  the daemon: lock, scheduler (APScheduler 3), signals, one worker per round
    worker.py   `python -m locft.daemon.worker`: one round in a child process
    logs.py     rotating log files under $LOCFT_HOME/logs

Thin shells over `locft.rounds` and `locft.store`. Nothing here imports torch except the worker.
"""
