-- A watermark is a log index of one cluster's logs: each row names that cluster's
-- incarnation (the meta group's cluster id, in hex). A cluster restored from this mirror,
-- or any other cluster pointed at this database, finds no watermark of its own and
-- resyncs each shard, rather than take another cluster's indexes for its own and skip its
-- changes. Rows from before have no cluster (''): the cluster that wrote them resyncs once.
ALTER TABLE mirror_watermarks ADD COLUMN cluster text NOT NULL DEFAULT '';
ALTER TABLE mirror_watermarks DROP CONSTRAINT mirror_watermarks_pkey;
ALTER TABLE mirror_watermarks ADD PRIMARY KEY (cluster, shard);
