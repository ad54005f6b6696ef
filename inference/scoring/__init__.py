"""The scoring core: a batch of inbound messages and the patients' states in, scores,
alert decisions, RiskAssessments, the new states and dead letters (with their reasons)
out. Pure: no Kafka, no Faust, no database; the model is a port (:mod:`.model_port`).

The worker (``streams.worker``), ``wardwatch score`` (``streams.offline``) and the
benchmarks all drive it, so the stream and the offline scores cannot drift apart.

record       PatientRecord: what is kept per patient (state, alert state, applied offsets)
applied      idempotence: which Kafka offsets a record already holds
envelope     Envelope: one message's canonical events for one patient; normalise()
prepare      apply an envelope, rule scores and the model's window (Pending)
alerts       advance the alert policy; the RiskAssessment of a raised alert
alert_card   the CDS Hooks card and FHIR RiskAssessment of an alert
model_port   the model as a port (Triton, in-process torch, a fake in tests)
model_info   the served model's name, version, alert policy and feature spec
batch        score_batch / decide: the batch function the callers drive
"""
