-- Click events, one row per redirect. Written by every node's click actor in batches.
--
-- Runs on ClickHouse 18.16 (Debian's package, used by the tests) and on current versions:
-- DateTime plus a millisecond column rather than DateTime64, no TTL (retention: drop old
-- monthly partitions), no LowCardinality.
--
-- A batch that is sent again (after a timeout, or replayed from a node's spool) inserts the
-- same rows again. The engine keeps one row per sorting key, which ends in the event id, once
-- parts merge; queries that must be exact read with FINAL. The hourly roll-up below counts
-- distinct event ids, so it is exact whatever was inserted twice.
CREATE TABLE IF NOT EXISTS clicks
(
    click_id UUID,
    short_code String,
    shard UInt32,
    clicked_at DateTime,
    clicked_ms UInt16,
    ip_address String,
    user_agent String,
    referer String,
    referer_host String,
    country_code String,
    device_type String,
    browser String,
    os String,
    language String,
    is_bot UInt8,
    visitor UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(clicked_at)
ORDER BY (short_code, clicked_at, click_id);

-- Hourly roll-up per link, bot flag and dimension values. Hours are UTC hours whatever the
-- server's time zone, as the embedded store's and the stats API's are. Each row keeps the
-- set of its event ids and of its visitors, so counts stay exact when a batch is inserted
-- twice.
CREATE TABLE IF NOT EXISTS clicks_hourly
(
    short_code String,
    hour DateTime,
    is_bot UInt8,
    country_code String,
    referer_host String,
    device_type String,
    browser String,
    os String,
    clicks AggregateFunction(uniqExact, UUID),
    visitors AggregateFunction(uniqExact, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (short_code, hour, is_bot, country_code, referer_host, device_type, browser, os);

CREATE MATERIALIZED VIEW IF NOT EXISTS clicks_hourly_mv TO clicks_hourly AS
SELECT
    short_code,
    toStartOfHour(clicked_at, 'UTC') AS hour,
    is_bot,
    country_code,
    referer_host,
    device_type,
    browser,
    os,
    uniqExactState(click_id) AS clicks,
    uniqExactState(visitor) AS visitors
FROM clicks
GROUP BY short_code, hour, is_bot, country_code, referer_host, device_type, browser, os;
