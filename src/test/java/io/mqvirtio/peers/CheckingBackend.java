package io.mqvirtio.peers;

import io.mqvirtio.linux.IoVec;
import io.mqvirtio.net.PacketBackend;
import io.mqvirtio.net.Port;
import io.mqvirtio.net.VirtioNet;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.concurrent.atomic.AtomicLongArray;

/**
 * A sink for tests: every frame a queue pair sends is checked (a well-formed virtio-net header, an Ethernet frame
 * of the expected length carrying IPv4) and counted per pair, good or malformed.
 */
final class CheckingBackend implements PacketBackend {
    private final int pairs;
    private final int frameLen;
    final AtomicLongArray good;
    final AtomicLongArray bad;

    CheckingBackend(int pairs, int frameLen) {
        this.pairs = pairs;
        this.frameLen = frameLen;
        this.good = new AtomicLongArray(pairs);
        this.bad = new AtomicLongArray(pairs);
    }

    @Override
    public int maxPairs() {
        return pairs;
    }

    @Override
    public long features() {
        return 0;
    }

    @Override
    public Port open(int pair) {
        return new Port() {
            private final byte[] buf = new byte[65536];

            @Override
            public int readFd() {
                return -1;
            }

            @Override
            public long send(IoVec frame) {
                long total = frame.totalBytes();
                frame.copyTo(MemorySegment.ofArray(buf), 0, buf.length);
                boolean ok = total == VirtioNet.HDR_SIZE + frameLen
                        && buf[VirtioNet.HDR_GSO_TYPE] == 0 // no GSO was negotiated
                        && buf[VirtioNet.HDR_SIZE + 12] == 0x08 && buf[VirtioNet.HDR_SIZE + 13] == 0x00 // IPv4
                        && (buf[VirtioNet.HDR_SIZE + 14] & 0xf0) == 0x40;
                (ok ? good : bad).incrementAndGet(pair);
                return total;
            }

            @Override
            public long receive(IoVec into) {
                return -1;
            }

            @Override
            public void close() {}
        };
    }

    @Override
    public String describe() {
        return "checking sink";
    }

    @Override
    public void close() {}
}
