package io.mqvirtio.bench;

import io.mqvirtio.linux.IoVec;
import io.mqvirtio.net.PacketBackend;
import io.mqvirtio.net.Port;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.virtio.ChainBurst;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * A sink that copies each frame out of guest memory into a buffer of its own before dropping it: what DPDK's
 * vhost PMD does for testpmd's rxonly (it copies every frame into an mbuf), so that scenario 2 against scenario 3
 * compares the same work. {@link io.mqvirtio.backend.SinkBackend} drops without touching the frame.
 */
final class CopySinkBackend implements PacketBackend {
    private final int maxPairs;

    CopySinkBackend(int maxPairs) {
        this.maxPairs = maxPairs;
    }

    @Override
    public int maxPairs() {
        return maxPairs;
    }

    @Override
    public long features() {
        return 0;
    }

    @Override
    public Port open(int pair) {
        MemorySegment buf = Arena.ofAuto().allocate(VirtioNet.MAX_GSO_FRAME + VirtioNet.HDR_SIZE, 64);
        return new Port() {
            @Override
            public int readFd() {
                return NEVER;
            }

            @Override
            public long send(IoVec frame) {
                frame.copyTo(buf, 0, buf.byteSize());
                return frame.totalBytes();
            }

            @Override
            public long send(long address, long length, IoVec scratch) {
                IoVec.copy(address, buf, 0, Math.min(length, buf.byteSize()));
                return length;
            }

            @Override
            public boolean sendsBursts() {
                return true;
            }

            @Override
            public void sendBurst(ChainBurst burst, int from, int n) {
                burst.checkRange(from, n);
                long room = buf.byteSize();
                for (int i = from; i < from + n; i++) {
                    IoVec.copy(burst.hostAddress(i), buf, 0, Math.min(Integer.toUnsignedLong(burst.length(i)), room));
                }
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
        return "copying sink";
    }

    @Override
    public void close() {}
}
