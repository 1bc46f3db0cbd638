"""Media: `media_assets` (the canonical record of every asset), presets, and where assets are used
(media_asset_usages: a post, campaign, collection, or the fan a copy was made for)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

AssetKind = Literal["image", "video", "audio", "document", "other"]
AssetStatus = Literal["pending", "processing", "ready", "failed"]
AssetSource = Literal["upload", "scrape", "generated", "import"]


class MediaAsset(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    kind: AssetKind
    status: AssetStatus
    storage_key: str
    original_filename: str | None
    mime_type: str | None
    byte_size: int | None
    checksum_sha256: str | None
    width: int | None
    height: int | None
    duration_ms: int | None
    source: AssetSource
    source_platform: str | None
    source_external_id: str | None
    derived_from_asset_id: UUID | None
    produced_by_job_id: UUID | None
    transcription_text: str | None
    ai_description: str | None
    ai_description_model: str | None
    tags: list[str]
    metadata: dict[str, Any]
    created_at: datetime


class MediaPreset(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    name: str
    watermark: dict[str, Any]
    output_format: str | None
    output_width: int | None
    output_height: int | None
    clip_duration_ms: int | None
    strip_metadata_fields: list[str]
    is_default: bool


class MediaAssetUsage(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    media_asset_id: UUID
    content_post_id: UUID | None
    campaign_id: UUID | None
    media_collection_id: UUID | None
    fan_profile_id: UUID | None  # the fan a (fingerprinted) copy was made for
    position: int | None


ASSET_COLUMNS = """id, user_id, kind, status, storage_key, original_filename, mime_type, byte_size, checksum_sha256,
       width, height, duration_ms, source, source_platform, source_external_id, derived_from_asset_id,
       produced_by_job_id, transcription_text, ai_description, ai_description_model, tags, metadata, created_at"""
PRESET_COLUMNS = """id, user_id, name, watermark, output_format, output_width, output_height, clip_duration_ms,
       strip_metadata_fields, is_default"""
USAGE_COLUMNS = """id, user_id, media_asset_id, content_post_id, campaign_id, media_collection_id, fan_profile_id,
       position"""
USAGE_TARGET = "(user_id, media_asset_id, content_post_id, campaign_id, media_collection_id, fan_profile_id)"

# Either unique key (storage key; platform + external id of a scraped item) makes a second create a
# no-op: the caller then gets the asset already stored.
CREATE_ASSET = (
    """
insert into media_assets (user_id, kind, storage_key, status, source, original_filename, mime_type, byte_size,
                          checksum_sha256, width, height, duration_ms, source_platform, source_external_id,
                          derived_from_asset_id, produced_by_job_id, tags, metadata)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
on conflict do nothing
returning """
    + ASSET_COLUMNS
)

FIND_EXISTING_ASSET = (
    "select "
    + ASSET_COLUMNS
    + """ from media_assets
 where user_id = $1
   and (storage_key = $2 or (source_platform = $3 and source_external_id = $4))
 order by (storage_key = $2) desc
 limit 1"""
)

GET_ASSET = "select " + ASSET_COLUMNS + " from media_assets where user_id = $1 and id = $2"

# Results of the transcription / description jobs; a NULL argument leaves the column as it is.
SET_ASSET_ANALYSIS = (
    """
update media_assets
   set transcription_text = coalesce($3, transcription_text),
       ai_description = coalesce($4, ai_description),
       ai_description_model = coalesce($5, ai_description_model)
 where user_id = $1 and id = $2
returning """
    + ASSET_COLUMNS
)

# The output a job already stored (a re-run of a job that got as far as recording it).
FIND_JOB_OUTPUT = (
    "select " + ASSET_COLUMNS + """ from media_assets
 where user_id = $1 and produced_by_job_id = $2
 order by created_at
 limit 1"""
)

# The recipients of a creator's fingerprinted copies (of one source, or of any when $2 is NULL):
# media_fingerprint records its recipient in the output's metadata.params.
FINGERPRINT_RECIPIENTS = """select distinct (metadata -> 'params' ->> 'fan_profile_id')::uuid as fan_profile_id
  from media_assets
 where user_id = $1 and metadata ->> 'operation' = 'fingerprinted'
   and ($2::uuid is null or derived_from_asset_id = $2)"""

# What a probe found out about the stored bytes; a NULL argument leaves the column as it is.
SET_ASSET_PROBE = (
    """
update media_assets
   set mime_type = coalesce($3, mime_type),
       byte_size = $4,
       checksum_sha256 = $5,
       width = coalesce($6, width),
       height = coalesce($7, height),
       duration_ms = coalesce($8, duration_ms),
       metadata = metadata || jsonb_build_object('probe', $9::jsonb)
 where user_id = $1 and id = $2
returning """
    + ASSET_COLUMNS
)

GET_PRESET = "select " + PRESET_COLUMNS + " from media_presets where user_id = $1 and id = $2"
GET_DEFAULT_PRESET = "select " + PRESET_COLUMNS + " from media_presets where user_id = $1 and is_default"

# unique nulls not distinct USAGE_TARGET
RECORD_USAGE = (
    """
insert into media_asset_usages (user_id, media_asset_id, content_post_id, campaign_id, media_collection_id,
                                fan_profile_id, position)
values ($1, $2, $3, $4, $5, $6, $7)
on conflict """
    + USAGE_TARGET
    + """ do update
    set position = coalesce(excluded.position, media_asset_usages.position)
returning """
    + USAGE_COLUMNS
)


async def create_asset(
    conn: Any,
    user_id: UUID,
    kind: AssetKind,
    storage_key: str,
    *,
    status: AssetStatus = "ready",
    source: AssetSource = "upload",
    original_filename: str | None = None,
    mime_type: str | None = None,
    byte_size: int | None = None,
    checksum_sha256: str | None = None,
    width: int | None = None,
    height: int | None = None,
    duration_ms: int | None = None,
    source_platform: str | None = None,
    source_external_id: str | None = None,
    derived_from_asset_id: UUID | None = None,
    produced_by_job_id: UUID | None = None,
    tags: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> MediaAsset:
    """Create the asset record, or return the one already stored under the same storage key (or the
    same scraped item): a retried job creates nothing twice."""
    row = await conn.fetchrow(
        CREATE_ASSET, user_id, kind, storage_key, status, source, original_filename, mime_type, byte_size,
        checksum_sha256, width, height, duration_ms, source_platform, source_external_id, derived_from_asset_id,
        produced_by_job_id, tags or [], metadata or {},
    )  # fmt: skip
    if row is None:
        row = await conn.fetchrow(FIND_EXISTING_ASSET, user_id, storage_key, source_platform, source_external_id)
    return MediaAsset.model_validate(dict(row))


async def get_asset(conn: Any, user_id: UUID, asset_id: UUID) -> MediaAsset | None:
    row = await conn.fetchrow(GET_ASSET, user_id, asset_id)
    return MediaAsset.model_validate(dict(row)) if row else None


async def set_asset_analysis(
    conn: Any,
    user_id: UUID,
    asset_id: UUID,
    *,
    transcription_text: str | None = None,
    ai_description: str | None = None,
    ai_description_model: str | None = None,
) -> MediaAsset | None:
    """Store transcription and/or AI description; `None` when the asset does not exist (any more)."""
    row = await conn.fetchrow(
        SET_ASSET_ANALYSIS, user_id, asset_id, transcription_text, ai_description, ai_description_model
    )
    return MediaAsset.model_validate(dict(row)) if row else None


async def get_preset(conn: Any, user_id: UUID, preset_id: UUID | None = None) -> MediaPreset | None:
    """A preset by id, or the creator's default preset when `preset_id` is None."""
    if preset_id is None:
        row = await conn.fetchrow(GET_DEFAULT_PRESET, user_id)
    else:
        row = await conn.fetchrow(GET_PRESET, user_id, preset_id)
    return MediaPreset.model_validate(dict(row)) if row else None


async def record_asset_usage(
    conn: Any,
    user_id: UUID,
    media_asset_id: UUID,
    *,
    content_post_id: UUID | None = None,
    campaign_id: UUID | None = None,
    media_collection_id: UUID | None = None,
    fan_profile_id: UUID | None = None,
    position: int | None = None,
) -> MediaAssetUsage:
    """Link an asset to exactly one post, campaign, collection or fan (idempotent; a position updates)."""
    targets = [t for t in (content_post_id, campaign_id, media_collection_id, fan_profile_id) if t is not None]
    if len(targets) != 1:
        raise ValueError(
            "an asset usage needs exactly one of content_post_id, campaign_id, media_collection_id, fan_profile_id"
        )
    row = await conn.fetchrow(
        RECORD_USAGE, user_id, media_asset_id, content_post_id, campaign_id, media_collection_id, fan_profile_id,
        position,
    )  # fmt: skip
    return MediaAssetUsage.model_validate(dict(row))


async def find_job_output(conn: Any, user_id: UUID, job_id: UUID) -> MediaAsset | None:
    row = await conn.fetchrow(FIND_JOB_OUTPUT, user_id, job_id)
    return MediaAsset.model_validate(dict(row)) if row else None


async def set_asset_probe(
    conn: Any,
    user_id: UUID,
    asset_id: UUID,
    *,
    mime_type: str | None,
    byte_size: int,
    checksum_sha256: str,
    width: int | None,
    height: int | None,
    duration_ms: int | None,
    probe: dict[str, Any],
) -> MediaAsset | None:
    row = await conn.fetchrow(
        SET_ASSET_PROBE, user_id, asset_id, mime_type, byte_size, checksum_sha256, width, height, duration_ms, probe
    )
    return MediaAsset.model_validate(dict(row)) if row else None


async def fingerprint_recipients(conn: Any, user_id: UUID, source_asset_id: UUID | None) -> list[UUID]:
    rows = await conn.fetch(FINGERPRINT_RECIPIENTS, user_id, source_asset_id)
    return [row["fan_profile_id"] for row in rows]


CollectionKind = Literal["ppv_bundle", "themed_drop", "exclusive_pack"]

# Of the ids asked for, those that are not the creator's assets.
MISSING_ASSETS = """select coalesce(array_agg(asked.id), '{}') as missing
  from unnest($2::uuid[]) as asked (id)
 where not exists (select 1 from media_assets a where a.user_id = $1 and a.id = asked.id)"""

# One statement: the collection and its members, in order (position 0, 1, ...).
BUNDLE_COLLECTION = """with made as (
    insert into media_collections (user_id, name, description, kind, price, currency, cover_asset_id)
    values ($1, $2, $3, $4, $5, $6, coalesce($7, ($8::uuid[])[1]))
    returning id
), members as (
    insert into media_asset_usages (user_id, media_asset_id, media_collection_id, position)
    select $1, asked.id, made.id, asked.ord - 1
      from made, unnest($8::uuid[]) with ordinality as asked (id, ord)
    returning media_asset_id
)
select made.id, (select count(*) from members) as members from made"""

COLLECTION_MEMBERS = """select media_asset_id from media_asset_usages
 where user_id = $1 and media_collection_id = $2
 order by position"""


async def bundle_collection(
    conn: Any,
    user_id: UUID,
    name: str,
    asset_ids: list[UUID],
    *,
    kind: CollectionKind = "ppv_bundle",
    description: str | None = None,
    price: Decimal | None = None,
    currency: str = "USD",
    cover_asset_id: UUID | None = None,
) -> UUID:
    """A new media_collections row (a PPV bundle by default; the cover defaults to the first asset)
    with the assets as its members in media_asset_usages, in the order given."""
    if not asset_ids:
        raise ValueError("asset_ids: a collection needs at least one asset")
    if len(set(asset_ids)) != len(asset_ids):
        raise ValueError("asset_ids: each asset may appear once")
    asked = [*asset_ids, *([cover_asset_id] if cover_asset_id else [])]
    missing = await conn.fetchval(MISSING_ASSETS, user_id, asked)
    if missing:
        raise ValueError(f"asset_ids: not assets of this creator: {', '.join(map(str, missing))}")
    row = await conn.fetchrow(BUNDLE_COLLECTION, user_id, name, description, kind, price, currency, cover_asset_id,
                              asset_ids)  # fmt: skip
    return UUID(str(row["id"]))


async def collection_members(conn: Any, user_id: UUID, collection_id: UUID) -> list[UUID]:
    return [row["media_asset_id"] for row in await conn.fetch(COLLECTION_MEMBERS, user_id, collection_id)]


COLLECTION_EXISTS = "select exists (select 1 from media_collections where user_id = $1 and id = $2)"

# A new member goes after the last one.
ADD_TO_COLLECTION = """insert into media_asset_usages (user_id, media_asset_id, media_collection_id, position)
select $1, $2, $3, coalesce(max(position) + 1, 0)
  from media_asset_usages where user_id = $1 and media_collection_id = $3
on conflict """ + USAGE_TARGET + " do nothing"


async def collection_exists(conn: Any, user_id: UUID, collection_id: UUID) -> bool:
    return bool(await conn.fetchval(COLLECTION_EXISTS, user_id, collection_id))


async def add_to_collection(conn: Any, user_id: UUID, asset_id: UUID, collection_id: UUID) -> None:
    """The asset as the collection's last member (already a member: nothing changes)."""
    await conn.execute(ADD_TO_COLLECTION, user_id, asset_id, collection_id)
