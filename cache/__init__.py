"""Model weights from an S3/B2 bucket into a verified local cache (`cache.store.hydrate`).

Modules: store (hydrate, progress, cache dir), download (ranged GETs), push (seed a bucket),
manifest (what a model is), layout (the cache folder), lock, s3 (clients, retries), errors.
"""
