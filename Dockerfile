# The service image: one image, every batchctl process.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY domain ./domain
COPY application ./application
COPY infrastructure ./infrastructure
COPY projections ./projections
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["batchctl"]
CMD ["run"]
