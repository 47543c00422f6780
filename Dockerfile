# keyfront: a slim, non-root image that runs `keyfront serve`.
# Mount the config at /etc/keyfront/keyfront.yaml (or set KEYFRONT_CONFIG), pass secrets
# through the environment (${VAR} in the config), and give it a volume for the disk
# cache (/var/cache/keyfront) and, with the SQLite store, /var/lib/keyfront. The root
# filesystem may be read-only (Kubernetes readOnlyRootFilesystem, compose read_only)
# with a tmpfs on /tmp. Stop grace: above shutdown_timeout (30 s by default), e.g.
# `docker stop -t 45`, compose stop_grace_period: 45s, or the final usage flush is killed.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# A fixed uid/gid (10001) so that Kubernetes' runAsNonRoot can check it and volumes can
# be given to it (fsGroup, chown) without looking inside the image.
RUN groupadd --system --gid 10001 keyfront \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/keyfront --create-home keyfront \
 && mkdir -p /var/cache/keyfront /etc/keyfront \
 && chown keyfront:keyfront /var/cache/keyfront \
 && chmod 0700 /var/lib/keyfront /var/cache/keyfront
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
ENV KEYFRONT_CONFIG=/etc/keyfront/keyfront.yaml PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080 9080
STOPSIGNAL SIGTERM
# No HEALTHCHECK: it would start a process in every replica every interval (a Python
# one costs ~60 ms of CPU and ~20 MB), Kubernetes ignores it (its probes call /healthz
# and /readyz over HTTP), and plain Docker restarts nothing on it. Compose defines a
# cheap check of its own (deploy/compose/docker-compose.yaml).
ENTRYPOINT ["keyfront"]
CMD ["serve"]
