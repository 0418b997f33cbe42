"""The API's request and response models (its OpenAPI contract), one module per domain."""
