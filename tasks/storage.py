"""Prefect-side storage configuration: a saved prefect-aws ``S3Bucket`` block named by S3_BLOCK.

mindscript never imports prefect, so the block is read here and turned into plain settings (bucket,
credentials, region, endpoint) before ``build_services`` picks the S3 adapter.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from mindscript.errors import StorageRejected
from mindscript.settings import Settings


def with_s3_block(settings: Settings) -> Settings:
    """``settings`` with the S3_BLOCK block's credentials and endpoint applied (unchanged without S3_BLOCK).

    The block's bucket is used for both public and private objects unless PUBLIC_BUCKET / PRIVATE_BUCKET are
    set explicitly; its ``bucket_folder`` is not used (keys are always ``renders/...``).
    """
    if settings.storage_backend != "s3" or not settings.s3_block:
        return settings
    from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket

    try:
        block: Any = S3Bucket.load(settings.s3_block, _sync=True)
    except ValueError as exc:
        raise StorageRejected(f"S3_BLOCK={settings.s3_block!r}: no saved S3Bucket block by that name") from exc
    creds = block.credentials
    update: dict[str, Any] = {}
    if isinstance(creds, MinIOCredentials):
        update["aws_access_key_id"] = creds.minio_root_user
        update["aws_secret_access_key"] = creds.minio_root_password
    elif isinstance(creds, AwsCredentials):
        if creds.aws_access_key_id:
            update["aws_access_key_id"] = creds.aws_access_key_id
        if creds.aws_secret_access_key is not None:
            update["aws_secret_access_key"] = creds.aws_secret_access_key
        if creds.aws_session_token:
            update["aws_session_token"] = SecretStr(creds.aws_session_token)
    if creds.region_name:
        update["s3_region"] = creds.region_name
    endpoint = creds.aws_client_parameters.endpoint_url
    if endpoint:
        update["s3_endpoint_url"] = endpoint
    for field in ("public_bucket", "private_bucket"):
        if field not in settings.model_fields_set:
            update[field] = block.bucket_name
    return settings.model_copy(update=update)
