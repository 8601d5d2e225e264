# trempy_nb: the package and its `trempy-nb` command. The compose file runs it as the fleet's
# `worker` service (`docker compose up --scale worker=3`); any other subcommand works too:
#   docker run --rm -e TREMPY_METADATA_URL=postgresql://... trempy_nb:local status
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TREMPY_HOME=/var/lib/trempy

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY trempy_nb ./trempy_nb
RUN pip install . \
 && useradd --system --create-home --uid 10001 trempy \
 && mkdir -p /var/lib/trempy \
 && chown trempy /var/lib/trempy \
 && chmod 0700 /var/lib/trempy

USER trempy
WORKDIR /var/lib/trempy
# a worker drains on SIGTERM (finishes its batch, commits, releases its leases): give it time
STOPSIGNAL SIGTERM
ENTRYPOINT ["trempy-nb"]
CMD ["worker"]
