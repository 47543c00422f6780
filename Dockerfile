# keyfront: a slim, non-root image that runs `keyfront serve`.
# Mount the config at /etc/keyfront/keyfront.yaml (or set KEYFRONT_CONFIG), pass secrets
# through the environment (${VAR} in the config), and give it a volume for the
# SQLite store and the disk cache.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/keyfront --create-home keyfront \
 && mkdir -p /var/cache/keyfront /etc/keyfront \
 && chown keyfront /var/cache/keyfront
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER keyfront
ENV KEYFRONT_CONFIG=/etc/keyfront/keyfront.yaml PYTHONUNBUFFERED=1
EXPOSE 8080 9080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9080/healthz', timeout=2)"
ENTRYPOINT ["keyfront"]
CMD ["serve"]
