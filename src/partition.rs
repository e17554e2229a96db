//! Which partition a key lands on: Kafka's default partitioner for keyed records (murmur2 of
//! the key bytes, seed 0x9747b28c, sign bit cleared, modulo the partition count), the same as
//! Java clients and librdkafka's `murmur2_random`. The repartition topic must use exactly this,
//! or SKU commands would not line up with the `inventory` partition of their sku.

/// The partition of `key` among `partitions` (> 0).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    let hash = murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff;
    hash % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Kafka's own partitioner tests (Utils.murmur2 as a signed int, then positive).
    #[test]
    fn matches_kafkas_murmur2() {
        let cases: [(&str, i32); 5] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
        ];
        for (key, java) in cases {
            assert_eq!(
                murmur2::murmur2(key.as_bytes(), murmur2::KAFKA_SEED) as i32,
                java,
                "{key}"
            );
            assert_eq!(
                partition_for_key(key.as_bytes(), 1_000_000),
                ((java as u32) & 0x7fff_ffff) % 1_000_000
            );
        }
    }
}
