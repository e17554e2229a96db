"""Kafka's murmur2 partitioner (the Java client's, and librdkafka's `murmur2_random` for keyed
records), so a peer can name a key that lands on a chosen partition: watermarks go to every
partition of the repartition topic, and Quix's `to_topic` picks partitions only by key."""


def murmur2(data: bytes) -> int:
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def key_for_partition(partition: int, partitions: int) -> str:
    """The first key `watermark-<i>` that murmur2 sends to `partition`."""
    i = 0
    while partition_of(f"watermark-{i}", partitions) != partition:
        i += 1
    return f"watermark-{i}"
