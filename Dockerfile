# The production image: web (gunicorn), Celery worker and beat all run from it.
FROM python:3.11-slim

# The project's version (pyproject.toml; tests/test_release.py keeps them equal).
LABEL org.opencontainers.image.title="fieldsync" \
      org.opencontainers.image.version="0.2.0"

# GUNICORN_CMD_ARGS: worker heartbeat files on tmpfs, as on an overlay filesystem they can
# stall workers.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000 \
    GUNICORN_CMD_ARGS="--worker-tmp-dir /dev/shm"

WORKDIR /app

# Dependencies first, so a code change doesn't reinstall them; every one pinned and
# hash-checked (make lock).
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY . .
# collectstatic only reads files; the settings still ask for what a deployment sets at run time.
RUN SECRET_KEY=build-only ALLOWED_HOSTS=localhost python manage.py collectstatic --noinput \
    && useradd --system --no-create-home --home-dir /app --uid 10001 fieldsync

USER fieldsync
EXPOSE 8000
CMD ["gunicorn", "-c", "gunicorn.conf.py", "syncserver.wsgi:application"]
