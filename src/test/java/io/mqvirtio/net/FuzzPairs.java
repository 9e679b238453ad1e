package io.mqvirtio.net;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.virtio.DriverRing;
import java.lang.foreign.MemorySegment;

/**
 * A queue pair over rings and buffers a test provides, for the driver-side fuzz target in {@code io.mqvirtio.fuzz}
 * (the pair's constructor is this package's): no vhost-user connection, enabled, its eventfds its own.
 */
public final class FuzzPairs {
    private FuzzPairs() {}

    public static NetQueuePair pair(DriverRing rx, DriverRing tx, MemorySegment rxBufs, long rxBufsGpa,
                                    MemorySegment txBufs, long txBufsGpa, int bufSize, boolean mergeable) {
        NetQueuePair q = new NetQueuePair(0, rx, tx, EventFd.create(), EventFd.create(), EventFd.create(),
                EventFd.create(), EventFd.create(), rxBufs, rxBufsGpa, txBufs, txBufsGpa, bufSize, mergeable, false, false);
        q.enabled = true;
        return q;
    }

    public static void close(NetQueuePair q) {
        q.close();
    }
}
