"""The one settings object. Built once at start-up (``Settings()``) and passed down.

Every field reads from an environment variable ``WARDWATCH_<FIELD>`` (upper case); the
README lists them all with their defaults. Defaults point at the local services that
``make up`` starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Public: components refuse it outside development mode (streams/deploy_checks.py).
DEFAULT_PSEUDONYM_KEY = "wardwatch-local-development-key-change-me"
VAR_DIR = PROJECT_ROOT / "var"


class Settings(BaseSettings):
    """WardWatch settings (environment prefix ``WARDWATCH_``)."""

    model_config = SettingsConfigDict(env_prefix="WARDWATCH_", extra="ignore", frozen=True)

    # --- Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    topic_inbound: str = Field("fhir.inbound", description="Raw FHIR bytes, keyed by pseudonym.")
    topic_dlq: str = Field("fhir.inbound.dlq", description="Dead letters: original bytes + reason.")
    topic_events: str = Field("clinical.events", description="Canonical clinical events.")
    topic_scores: str = Field("risk.scores", description="Every score.")
    topic_alerts: str = Field("risk.alerts", description="Alerts (FHIR RiskAssessment).")
    topic_partitions: int = Field(8, description="Partitions for the project's topics.")
    app_id: str = Field("wardwatch", description="Faust app id (consumer group, table topics).")
    worker_web_port: int = Field(6066, description="Faust worker web port.")
    worker_web_host: str = Field(
        "127.0.0.1",
        description="Address of the worker's web server (/metrics, /healthz, /readyz); "
        "0.0.0.0 to let Prometheus on another host scrape it.",
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="Log lines: one JSON object each (json) or plain text (text)."
    )
    worker_session_timeout_s: float = Field(
        10.0,
        description="A worker silent this long leaves the group and its partitions move on.",
    )
    # Splitting the roles took the database writers' work (reading the scores back,
    # SQL, commits) off the scoring process: at 2,000 events/s offered its CPU per
    # message fell from ~3.05 to ~2.55 ms and the alert p99 from 223-500 ms to 223-245 ms.
    worker_role: Literal["all", "score", "persist"] = Field(
        "all",
        description="Agents this worker runs: all; score (inbound to scores and alerts, "
        "no database); persist (scores, alerts and dead letters into the database, as "
        "consumer group <app id>-writer). Run every worker of one app id with one role.",
    )
    batch_size: int = Field(500, description="Events an agent takes per batch.")
    # The scoring agent's wait is on the alert path: Faust's take waits this long after
    # every batch, even with messages queued, so each cycle pays it. Measured at 2,000
    # events/s offered, one model instance: 0.02 s gave alert p50 139-292 ms, p99
    # 375-577 ms over four runs; 0.005 s p50 131-151 ms, p99 286-302 ms over two (0.2 s:
    # seconds). A backlog still gets full batches (batch_busy_within_s).
    batch_within_s: float = Field(
        0.005, description="Longest the scoring agent waits to fill a batch, seconds."
    )
    batch_busy_within_s: float = Field(
        0.1,
        description="Longest the scoring agent keeps filling a batch while a backlog pours "
        "in (each batch_within_s wait adding 16 events or more), seconds; a full batch "
        "(batch_size) ends it sooner.",
    )
    predict_chunk: int = Field(
        16,
        description="Windows per model request while a batch is prepared: the model server "
        "works on one chunk while the worker prepares the next.",
        ge=1,
    )
    # The database writers are off the alert path, and each batch is a transaction:
    # a longer wait means fewer, larger commits for the same rows.
    persist_within_s: float = Field(
        0.5, description="Longest a database writer waits to fill a batch, seconds."
    )
    # A broker-side fetch wait: at a trickle each fetch otherwise returns a record or two,
    # and every fetch (of all the worker's partitions: aiokafka has no fetch sessions)
    # costs the worker and the broker. 16 KiB / 20 ms, against Faust's 1 byte / 1.5 s,
    # over two alternating runs each on the local services: worker CPU at 500, 1,000
    # and 2,000 events/s offered 0.40-0.49 / 0.49-0.60 / 0.59-0.71 cores against
    # 0.53-0.65 / 0.69-0.77 / 0.73-0.77, alert p99 at 2,000 events/s 165-479 ms against
    # 157-1,273 ms, no worse at 500; idle, about 0.05 cores more in the worker and in the
    # broker (a fetch every 20 ms). It made a stall after rebalances frequent until
    # seek_to_committed seeked again (streams/faust_fixes.py).
    fetch_min_bytes: int = Field(
        16384,
        description="Bytes the broker gathers before answering the worker's fetch (or "
        "fetch_max_wait_ms passes). Larger values mean fewer fetch round trips at a steady "
        "trickle, and less CPU in the worker and the broker; each fetch then waits up to "
        "fetch_max_wait_ms for them.",
    )
    fetch_max_wait_ms: int = Field(
        20, description="Longest the broker holds a fetch for fetch_min_bytes, ms."
    )
    producer_linger_ms: float = Field(
        5.0, description="How long the worker's producer waits to fill a request, ms."
    )

    # --- Edge (wardwatch gateway)
    gateway_host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    gateway_mllp_port: int = Field(2575, description="HL7 v2 MLLP port of the gateway.")
    gateway_http_port: int = Field(8081, description="FHIR REST port of the gateway.")
    gateway_max_body_bytes: int = Field(
        5_000_000, description="Largest FHIR request body or MLLP message accepted, bytes."
    )
    gateway_default_tz: str = Field(
        "UTC", description="IANA time zone for HL7 v2 timestamps sent without a UTC offset."
    )
    data_dir: Path = Field(
        VAR_DIR,
        description="Where a worker keeps its local state (Faust's data directory, "
        "created with its parents); must be writable by the service's user.",
    )
    gateway_dedup_path: Path = Field(
        VAR_DIR / "gateway-seen.sqlite",
        description="SQLite file of HL7 v2 control ids already published (resend detection).",
    )
    gateway_dedup_days: float = Field(
        30.0, description="How long a published HL7 v2 control id is remembered, days."
    )
    gateway_delivery_timeout_s: float = Field(
        30.0, description="Longest wait for Kafka to acknowledge a gateway write, seconds."
    )

    # --- Analyst API (wardwatch api)
    api_host: str = Field("127.0.0.1", description="Address the analyst API listens on.")
    api_port: int = Field(8080, description="Port of the analyst API and dashboard.")
    api_stream_poll_s: float = Field(
        1.0, description="How often the alert stream (SSE) looks for new alerts, seconds."
    )
    retention_days: float = Field(
        365.0, description="`wardwatch purge` deletes scores, alerts, dead letters older."
    )

    # --- TLS and client authentication of the listeners (gateway and API; docs/gateway.md)
    tls_min_version: Literal["1.2", "1.3"] = Field(
        "1.2", description="Lowest TLS version the gateway's and the API's listeners accept."
    )
    gateway_tls_cert: Path | None = Field(
        None,
        description="PEM certificate (chain) of the gateway's MLLP and FHIR listeners; "
        "unset: plain text (loopback development only).",
    )
    gateway_tls_key: Path | None = Field(None, description="PEM private key of gateway_tls_cert.")
    gateway_tls_client_ca: Path | None = Field(
        None,
        description="PEM CA certificate(s) that sign the MLLP senders' client certificates; "
        "set: MLLP requires and verifies a client certificate (mutual TLS).",
    )
    gateway_mllp_allowed_clients: str = Field(
        "",
        description="Comma-separated client certificate subject CNs or SANs (DNS, URI, IP) "
        "allowed to send MLLP; empty: every certificate the CA signed.",
    )
    gateway_oauth_jwks_path: Path | None = Field(
        None,
        description="JWKS file of the authorisation server's token signing keys; set: the "
        "FHIR endpoints require an OAuth2 bearer access token (SMART Backend Services).",
    )
    gateway_oauth_issuer: str = Field(
        "", description="Required `iss` of access tokens (the authorisation server)."
    )
    gateway_oauth_audience: str = Field(
        "", description="Required `aud` of access tokens (the gateway's FHIR base URL)."
    )
    api_tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) of the analyst API; unset: plain text."
    )
    api_tls_key: Path | None = Field(None, description="PEM private key of api_tls_cert.")
    api_tls_client_ca: Path | None = Field(
        None,
        description="PEM CA certificate(s) of client certificates; set: the API requires "
        "and verifies a client certificate (mutual TLS) besides its bearer token.",
    )

    # --- CDS Hooks (the API's /cds-services; see docs/api.md)
    cds_jwks: str | None = Field(
        None,
        description="Public keys of the EHRs calling the CDS Hooks service: a JWKS file "
        "path (re-read when it changes) or an https:// URL; unset: hook calls answer 503.",
    )
    cds_issuers: str = Field(
        "",
        description="Comma-separated `iss` values (the EHRs) whose JWTs are trusted.",
    )
    cds_base_url: str | None = Field(
        None,
        description="Public URL of /cds-services as the EHR calls it (the JWT `aud` is "
        "<this>/<service id>); unset: taken from the request.",
    )

    # --- Alert delivery (wardwatch deliver): FHIR rest-hook Subscriptions, HL7 v2 MLLP
    delivery_retry_hours: float = Field(
        6.0,
        gt=0.0,
        description="How long delivery to a subscriber keeps retrying before the subscriber "
        "is marked error (its events kept, visible through $status and $events), hours.",
    )
    delivery_backoff_initial_s: float = Field(
        1.0, gt=0.0, description="First wait after a failed delivery, seconds (then doubles)."
    )
    delivery_backoff_max_s: float = Field(
        300.0, gt=0.0, description="Longest wait between delivery attempts, seconds."
    )
    delivery_poll_s: float = Field(
        0.5, gt=0.0, description="How often the delivery loop looks for new outbox rows, seconds."
    )
    delivery_max_events: int = Field(
        100, ge=1, description="Most events one FHIR notification Bundle carries."
    )
    delivery_timeout_s: float = Field(
        10.0, gt=0.0, description="Longest wait for a receiver to answer one send, seconds."
    )
    delivery_fhir_base: str = Field(
        "http://127.0.0.1:8080/fhir",
        description="The API's public FHIR base URL: notifications refer to subscriptions "
        "and alerts under it (receivers fetch id-only focus resources there).",
    )
    # --- HL7 v2 alerts out and id-only notifications fetched back (issue 19)
    delivery_hl7_max_attempts: int = Field(
        5,
        ge=1,
        description="Sends of one ORU^R01 (refused, timed out or a mismatched ACK) before "
        "its HL7 v2 destination is marked error; it is still retried at the longest "
        "backoff, events kept.",
    )
    delivery_hl7_tls_ca: Path | None = Field(
        None,
        description="PEM CA bundle that signs the certificates of mllps:// HL7 v2 "
        "destinations (MLLP over TLS); unset: the system's CAs. The host name is checked.",
    )
    delivery_hl7_tls_cert: Path | None = Field(
        None,
        description="PEM client certificate presented to mllps:// destinations that "
        "require mutual TLS (with delivery_hl7_tls_key).",
    )
    delivery_hl7_tls_key: Path | None = Field(
        None, description="PEM private key of delivery_hl7_tls_cert."
    )
    gateway_fetch_base_url: str | None = Field(
        None,
        description="FHIR base URL the gateway fetches id-only/empty notification focus "
        "resources from; a focus outside it is refused (422). Unset: such notifications "
        "are refused.",
    )
    gateway_fetch_token: SecretStr | None = Field(
        None, description="Bearer token sent with fetch-back requests (unset: none)."
    )
    gateway_fetch_timeout_s: float = Field(
        10.0, gt=0.0, description="Longest wait for one fetch-back request, seconds."
    )
    gateway_fetch_retries: int = Field(
        2, ge=0, description="Retries of a failed fetch-back request before answering 503."
    )
    gateway_fetch_backoff_s: float = Field(
        0.5, gt=0.0, description="First wait before a fetch-back retry, seconds (doubles)."
    )

    # --- Database
    database_url: str = Field(
        f"sqlite:///{VAR_DIR / 'wardwatch.db'}",
        description="SQLAlchemy URL; SQLite file by default, postgresql+psycopg://... for PG.",
    )

    # --- Audit and database roles (wardwatch db upgrade / db grant)
    migration_database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the schema owner, used only by `wardwatch db "
        "upgrade` and `wardwatch db grant` (DDL and grants); default: WARDWATCH_DATABASE_URL.",
    )
    api_stream_recheck_s: float = Field(
        5.0,
        ge=0.0,
        description="How often an open alert stream (SSE) re-validates its token, seconds; "
        "a revoked token's stream ends within this (0: at every poll).",
    )

    # --- Triton
    triton_grpc_url: str = Field("127.0.0.1:8001", description="Triton gRPC address.")
    triton_model: str = Field("sepsis_transformer", description="Model name in the repository.")
    triton_timeout_s: float = Field(
        5.0, description="Per-request Triton deadline, seconds; past it a score is degraded."
    )
    triton_max_batch: int = Field(64, description="Largest batch sent in one Triton request.")
    triton_max_inflight: int = Field(
        2,
        description="Triton requests one worker keeps in flight at once; more chunks wait "
        "their turn, so each request's deadline measures the server, not the queue.",
    )
    model_dir: Path = Field(
        PROJECT_ROOT / "inference" / "model_repository" / "sepsis_transformer",
        description="Model folder used by offline scoring (`wardwatch score`).",
    )

    # --- Edge limits and client TLS/SASL (issue 18)
    # MLLP: one ACK per message, so a connection's pending work is bounded by its frames;
    # these bound the connections themselves, so one flooding sender cannot starve others.
    gateway_mllp_idle_timeout_s: float = Field(
        300.0,
        gt=0,
        description="An MLLP connection with nothing sent and nothing pending this long is "
        "closed (logged, counted), seconds.",
    )
    gateway_mllp_max_connections: int = Field(
        256, ge=1, description="Open MLLP connections at most; more are accepted and closed."
    )
    gateway_mllp_max_connections_per_client: int = Field(
        16,
        ge=1,
        description="Open MLLP connections one client address may hold; more are accepted "
        "and closed.",
    )
    gateway_http_max_concurrency: int = Field(
        128,
        ge=1,
        description="FHIR requests in flight at once; more are answered 503 with Retry-After.",
    )
    gateway_http_max_concurrency_per_client: int = Field(
        16,
        ge=1,
        description="FHIR requests in flight per client address; more are answered 429 "
        "with Retry-After.",
    )
    gateway_http_max_connections: int = Field(
        1024,
        ge=1,
        description="uvicorn's limit_concurrency: open HTTP connections plus tasks; past it "
        "uvicorn answers a plain 503.",
    )
    gateway_http_keep_alive_s: int = Field(
        5, ge=1, description="uvicorn's timeout_keep_alive: an idle HTTP connection's life, s."
    )
    gateway_http_retry_after_s: int = Field(
        1, ge=0, description="Retry-After of a 429/503 for too many requests, seconds."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client of WardWatch talks to the brokers."
    )
    kafka_ssl_ca_file: Path | None = Field(
        None, description="PEM CA bundle that signed the brokers' certificates (SSL, SASL_SSL)."
    )
    kafka_ssl_cert_file: Path | None = Field(
        None, description="PEM client certificate for mutual TLS with the brokers."
    )
    kafka_ssl_key_file: Path | None = Field(
        None, description="PEM private key of kafka_ssl_cert_file."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL)."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    database_sslmode: (
        Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None
    ) = Field(None, description="PostgreSQL sslmode (libpq); unset: the URL's or libpq's.")
    database_sslrootcert: Path | None = Field(
        None, description="PostgreSQL: PEM CA bundle to verify the server (verify-ca/-full)."
    )
    database_sslcert: Path | None = Field(None, description="PostgreSQL: PEM client certificate.")
    database_sslkey: Path | None = Field(None, description="PostgreSQL: client private key.")
    triton_ssl: bool = Field(False, description="Talk TLS to Triton's gRPC endpoint.")
    triton_ssl_ca_file: Path | None = Field(
        None, description="PEM CA bundle for Triton's certificate; unset: the system's."
    )
    triton_ssl_cert_file: Path | None = Field(
        None, description="PEM client certificate for mutual TLS with Triton."
    )
    triton_ssl_key_file: Path | None = Field(
        None, description="PEM private key of triton_ssl_cert_file."
    )

    # --- Failures
    retry_budget_s: float = Field(
        300.0,
        description="How long an agent retries a transient failure (database or broker "
        "away) before it stops the worker without committing.",
    )
    dead_letter_max_ratio: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="An agent stops the worker, without committing, when more than this "
        "share of the messages it took in the window were dead-lettered (1.0: no limit).",
    )
    dead_letter_window_s: float = Field(
        60.0, gt=0.0, description="The dead-letter limit's sliding window, seconds."
    )
    dead_letter_min_messages: int = Field(
        200, ge=1, description="Messages the window must hold before the dead-letter limit applies."
    )

    # --- Dead-letter encryption (streams/sealing.py)
    dead_letter_key: SecretStr | None = Field(
        None,
        description="AES-256-GCM key (32 bytes, base64 or hex) that encrypts the original "
        "bytes of every dead letter. Unset: refused outside development mode; in development "
        "mode a public development key (id `dev`) is derived.",
    )
    dead_letter_key_id: str = Field(
        "k1",
        description="Id of dead_letter_key, written into each dead letter's headers so the "
        "key can be rotated; give each new key a new id.",
        pattern=r"^[A-Za-z0-9._-]{1,40}$",
    )
    dead_letter_old_keys: SecretStr | None = Field(
        None,
        description="Retired dead-letter keys, for decryption only: comma-separated "
        "<key id>:<key> pairs (each key 32 bytes, base64 or hex).",
    )

    # --- Clinical
    pseudonym_key: SecretStr = Field(
        SecretStr(DEFAULT_PSEUDONYM_KEY),
        description="HMAC key that turns patient identifiers into pseudonyms (at least 32 "
        "bytes). The default is public: outside development mode nothing starts on it.",
    )
    new_pseudonym_key: SecretStr | None = Field(
        None,
        description="The key a pseudonym-key rotation moves to; read only by `wardwatch "
        "rekey map` (docs/operations.md, rotating the pseudonym key).",
    )
    dev_mode: bool = Field(
        False,
        description="Development mode: components start on the default pseudonym key and "
        "database password (with a warning). Set by the Makefile's local targets and the "
        "demo; never in production.",
    )
    staleness_hours: float = Field(12.0, description="A vital older than this is not scored.")
    alert_threshold: float | None = Field(
        None, description="Risk at or above which an alert is raised; default: the model card's."
    )
    alert_clear_ratio: float | None = Field(
        None,
        description="Hysteresis: an alert clears below threshold x this ratio; default: the "
        "model card's alert_policy (chosen by cross-validation).",
    )
    alert_hold_hours: float | None = Field(
        None,
        description="An alert stays at least this long after the risk last reached the "
        "threshold; default: the model card's alert_policy.",
    )
    alert_suppress_hours: float | None = Field(
        None,
        description="No repeat alert within this window unless severity escalates; default: "
        "the model card's alert_policy (6 h).",
    )
    physionet_stay_start: str = Field(
        "2026-01-01T00:00:00+00:00",
        description="When a replayed PhysioNet stay begins (row hour 0).",
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """This process's environment with every setting of ``settings`` as WARDWATCH_*.

    For starting a worker (or any child process) with exactly these settings.
    """
    env = dict(os.environ)
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None:
            env[f"WARDWATCH_{name.upper()}"] = str(value)
    return env
