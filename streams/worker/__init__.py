"""The Faust worker: thin agents over the scoring core (:mod:`inference.scoring`).

app          the Faust app, its topics and table, and the agents wired to them
agents       the agents: take a batch, call the core or the writer, send, acknowledge
outputs      sending a scored batch's outputs and writing the records that follow
deadletters  dead letters: sealed, sent, acknowledged, counted against the limit
supervision  retrying transient failures; stopping the worker loudly
partitions   whether the inbound topic, the events topic and the table share partitions
"""
