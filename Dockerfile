# KAHN Scope: one image for the web server, the Celery worker and Celery beat (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KAHN_HOME=/var/lib/kahn

WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . \
 && useradd --system --home-dir /var/lib/kahn --create-home kahn

# No root at run time; KAHN_HOME holds nothing a container needs to keep (PostgreSQL does).
USER kahn
EXPOSE 8080
CMD ["python", "manage.py", "serve", "--mode", "cloud", "--host", "0.0.0.0", "--port", "8080"]
