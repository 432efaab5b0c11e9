# One image for every role: WORKER_MODE picks what a container does (server, worker, shared);
# compose.yaml and a PaaS run the commands of deploy/commands.py with it
# (tests/unit/test_deploy_commands.py keeps them equal). docs/deployment.md has the recipe.

# --- build: the virtualenv (compilers stay here) and the static files ------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /venv
COPY requirements.txt /app/requirements.txt
RUN /venv/bin/pip install -r /app/requirements.txt
COPY . /app
WORKDIR /app
# collectstatic reads the settings only (nothing connects): placeholder URLs and secrets.
RUN CONVEYOR_ENV=development DATABASE_URL=postgresql://build@127.0.0.1/build REDIS_URL=redis://127.0.0.1:6379/0 \
    /venv/bin/python manage.py collectstatic --no-input \
 && rm -rf /app/var /app/.venv

# --- runtime: no compilers, a non-root user; whitenoise serves /app/staticfiles ------------------
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 conveyor
COPY --from=build /venv /venv
COPY --from=build --chown=conveyor:conveyor /app /app
WORKDIR /app
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CONVEYOR_ENV=production \
    CONVEYOR_DATA=/tmp/conveyor \
    WORKER_MODE=shared \
    PORT=8000
USER conveyor
EXPOSE 8000
CMD ["python", "manage.py", "start"]
