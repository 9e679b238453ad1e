package io.mqvirtio.net;

/**
 * Where a net device's frames go: QEMU's "net client" role. Opens one {@link Port} per queue pair; a backend knows
 * nothing of virtqueues.
 */
public interface PacketBackend extends AutoCloseable {
    /** The most queue pairs it can serve. */
    int maxPairs();

    /** The virtio-net offload feature bits it can carry (checksum, TSO), offered to the guest. */
    long features();

    /** Opens pair {@code pair}'s port. */
    Port open(int pair);

    /** A short description for logs, e.g. "tap mqv0". */
    String describe();

    @Override
    void close();
}
