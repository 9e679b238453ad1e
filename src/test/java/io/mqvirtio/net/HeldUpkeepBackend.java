package io.mqvirtio.net;

import io.mqvirtio.linux.IoVec;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Pairs whose upkeep (every 20 ms) waits, as a TAP ioctl waits for the host's rtnl lock, until {@code held} opens;
 * {@code waiting} counts the upkeeps that began to wait. Their ports have no descriptor, take every frame and have
 * none to give.
 */
public final class HeldUpkeepBackend implements PacketBackend {
    private final int pairs;
    private final CountDownLatch held;
    private final AtomicInteger waiting;

    public HeldUpkeepBackend(int pairs, CountDownLatch held, AtomicInteger waiting) {
        this.pairs = pairs;
        this.held = held;
        this.waiting = waiting;
    }

    @Override public int maxPairs() { return pairs; }
    @Override public long features() { return 0; }
    @Override public String describe() { return "held"; }
    @Override public void close() {}

    @Override
    public Port open(int pair) {
        return new Port() {
            @Override public int readFd() { return NEVER; }
            @Override public long send(IoVec frame) { return frame.totalBytes(); }
            @Override public long receive(IoVec into) { return -1; }
            @Override public long upkeepNanos() { return 20_000_000L; }
            @Override public boolean upkeep() {
                waiting.incrementAndGet();
                try {
                    held.await();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
                return false;
            }
            @Override public void close() {}
        };
    }
}
