package io.mqvirtio.backend;

import io.mqvirtio.linux.IoVec;
import io.mqvirtio.net.PacketBackend;
import io.mqvirtio.net.Port;
import io.mqvirtio.virtio.ChainBurst;

/** Counts and drops every frame (a benchmark's receiver); never delivers any. */
public final class SinkBackend implements PacketBackend {
    private final int maxPairs;

    public SinkBackend(int maxPairs) {
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
        return new Port() {
            @Override
            public int readFd() {
                return NEVER;
            }

            @Override
            public long send(IoVec frame) {
                return frame.totalBytes();
            }

            @Override
            public boolean sendsBursts() {
                return true;
            }

            @Override
            public void sendBurst(ChainBurst burst, int from, int n) {
                burst.checkRange(from, n); // counted by the worker, dropped here
            }

            @Override
            public boolean readsFrames() {
                return false;
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
        return "sink";
    }

    @Override
    public void close() {}
}
