package io.mqvirtio.net;

import io.mqvirtio.linux.IoVec;
import io.mqvirtio.virtio.ChainBurst;

/**
 * A test's port that hands every call to {@link #real()} (a real TAP queue's, say) but those it overrides: a record
 * {@code (Port real, ...)} implementing this changes one behaviour of a real port and keeps the rest, each of
 * {@link Port}'s methods included (a default of Port's left in place would quietly not reach the real port).
 */
interface ForwardingPort extends Port {
    Port real();

    @Override default int readFd() { return real().readFd(); }
    @Override default long send(IoVec frame) { return real().send(frame); }
    @Override default long send(long address, long length, IoVec scratch) { return real().send(address, length, scratch); }
    @Override default boolean queue(long address, long length, IoVec scratch) { return real().queue(address, length, scratch); }
    @Override default boolean sendsBursts() { return real().sendsBursts(); }
    @Override default void sendBurst(ChainBurst burst, int from, int n) { real().sendBurst(burst, from, n); }
    @Override default int batch() { return real().batch(); }
    @Override default boolean queue(IoVec frame) { return real().queue(frame); }
    @Override default int flush(long[] results) { return real().flush(results); }
    @Override default void discard() { real().discard(); }
    @Override default String ioMethod(boolean isRx) { return real().ioMethod(isRx); }
    @Override default long receive(IoVec into) { return real().receive(into); }
    @Override default long receive(long address, long length, IoVec scratch) { return real().receive(address, length, scratch); }
    @Override default void setActive(boolean active) { real().setActive(active); }
    @Override default boolean readsFrames() { return real().readsFrames(); }
    @Override default boolean hostWritesHeaders() { return real().hostWritesHeaders(); }
    @Override default long upkeepNanos() { return real().upkeepNanos(); }
    @Override default boolean upkeep() { return real().upkeep(); }
    @Override default void setFeatures(long features) { real().setFeatures(features); }
    @Override default void reset() { real().reset(); }
    @Override default void close() { real().close(); }
}
