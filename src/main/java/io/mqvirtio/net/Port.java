package io.mqvirtio.net;

import io.mqvirtio.linux.IoVec;
import io.mqvirtio.virtio.ChainBurst;

/**
 * One queue pair's way to the host (a TAP queue, a loopback, a sink): the backend side of a worker. Frames always
 * carry the 12-byte virtio-net header in front. Used by one worker thread only.
 */
public interface Port extends AutoCloseable {
    /** {@link #readFd()}: no descriptor; try {@link #receive} after each TX batch (a loopback). */
    int POLL = -1;
    /** {@link #readFd()}: this port never receives (a sink). */
    int NEVER = -2;

    /**
     * A descriptor that is readable when frames wait for {@link #receive} and becomes writable again after a
     * {@link #send} that would block (an edge the worker waits for), or {@link #POLL}, or {@link #NEVER}.
     */
    int readFd();

    /** Sends one frame (header then frame) gathered from {@code frame}: bytes taken, or -1 if it would block. */
    long send(IoVec frame);

    /**
     * Sends one frame that lies in one buffer, {@code length} bytes at this process's {@code address} (header then
     * frame, inside guest memory: checked when its chain was popped): {@link #send} of a one-entry iovec, which is
     * what this default does, in {@code scratch}. A port that copies frames copies it from there, with no iovec.
     */
    default long send(long address, long length, IoVec scratch) {
        scratch.clear();
        scratch.addRaw(address, length);
        return send(scratch);
    }

    /** {@link #queue} of a frame in one buffer, as {@link #send(long, long, IoVec)} is {@link #send} of one. */
    default boolean queue(long address, long length, IoVec scratch) {
        scratch.clear();
        scratch.addRaw(address, length);
        return queue(scratch);
    }

    /**
     * Whether this port takes a TX burst's frames with one {@link #sendBurst} call: a port in this process that copies
     * or counts frames and never blocks nor fails (a loopback, a sink). Asked once per TX burst; the default is false.
     */
    default boolean sendsBursts() {
        return false;
    }

    /**
     * Takes frames {@code from..from+n-1} of a burst of one-buffer chains (each header then frame, inside guest
     * memory and at least a header long: the worker checked them), in order, every one: sent, or dropped and counted
     * by the port (as a full link drops), never given back. Called only when {@link #sendsBursts} is true; the worker
     * counts them as {@link #send} would have. One call where {@link #send} took a call, its checks and its counts per
     * frame.
     */
    default void sendBurst(ChainBurst burst, int from, int n) {
        throw new UnsupportedOperationException("this port sends frame by frame");
    }

    /**
     * Frames this port can hold for one {@link #flush} ({@link #queue}), or 0 when it sends each frame at once (the
     * default). Asked once per TX burst.
     */
    default int batch() {
        return 0;
    }

    /**
     * Takes a copy of one frame (header then frame) to send with the next {@link #flush}; false when it is not taken
     * (larger than a batch slot, the batch full, batching off): then the worker flushes and uses {@link #send}.
     */
    default boolean queue(IoVec frame) {
        return false;
    }

    /**
     * Sends the frames {@link #queue} took, in order, in one go: {@code results[i]} is frame i's (bytes taken, or
     * -errno); returns how many have their result. A port that had no room for a frame (a TAP whose send buffer is
     * full) keeps it and every frame after it, in order, and returns fewer than it held: the worker then takes
     * nothing more, waits for the port's fd to become writable (an edge of {@link #readFd()}) and flushes again,
     * those frames first ({@code results[0]} is then the first of them).
     */
    default int flush(long[] results) {
        return 0;
    }

    /** Drops the frames a {@link #flush} kept for want of room (the worker counts them as dropped). */
    default void discard() {}

    /** How this port moves frames to ({@code isRx}: from) the host, for logs and metrics: "writev", "io_uring", or "". */
    default String ioMethod(boolean isRx) {
        return "";
    }

    /** Receives one frame (header then frame) into {@code into}: its length, or -1 if none is waiting. */
    long receive(IoVec into);

    /**
     * Receives one frame into one buffer, {@code length} bytes at this process's {@code address} (inside guest
     * memory: checked when its chain was popped): {@link #receive} of a one-entry iovec in {@code scratch}, which is
     * what this default does; a TAP reads straight into it.
     */
    default long receive(long address, long length, IoVec scratch) {
        scratch.clear();
        scratch.addRaw(address, length);
        return receive(scratch);
    }

    /**
     * Whether the host should hand this queue frames (a TAP queue is attached or detached). This and the other
     * control calls ({@link #setFeatures}, {@link #upkeep}, {@link #reset}) may wait for a lock of the host's (a TAP's
     * ioctls take the kernel's rtnl lock): the worker says so to its commands' callers, who wait longer for it.
     */
    default void setActive(boolean active) {}

    /**
     * Whether {@link #send} reads the frame's bytes (a TAP's writev, a copy): the worker then reads the first bytes
     * of a burst's frames ahead, so that their cache misses overlap. A port that only counts says false.
     */
    default boolean readsFrames() {
        return true;
    }

    /**
     * Whether the virtio-net headers of received frames come from outside this process: a TAP writes them from its
     * offloads, which are its device's, so any holder of one of its queues can turn on one the guest did not
     * negotiate (TUNSETOFFLOAD). The worker then drops and counts a frame whose header the guest may not get. A port
     * of this process (a loopback) hands back the headers its guest wrote. The default is false.
     */
    default boolean hostWritesHeaders() {
        return false;
    }

    /**
     * How often the worker calls {@link #upkeep} (nanoseconds), or 0 (the default): never. Asked once, when the worker
     * is made.
     */
    default long upkeepNanos() {
        return 0;
    }

    /**
     * Looks after what the host may change under the port (a TAP deleted and created again under its name, its
     * header size set by another holder), on the worker's thread, between rounds, every {@link #upkeepNanos}, never
     * while frames are held from a {@link #flush}. True when {@link #readFd} now names another descriptor (the old one
     * is closed): the worker then watches the new one. Throws nothing.
     */
    default boolean upkeep() {
        return false;
    }

    /** The negotiated virtio-net features, for the offloads the host may use towards the guest. */
    default void setFeatures(long features) {}

    /**
     * The device was reset (its frontend went away): drop whatever the port still holds for it, so that nothing of
     * one session reaches the next frontend. A TAP needs nothing here: detaching its queue (both rings stopped)
     * purges what the kernel had queued.
     */
    default void reset() {}

    @Override
    void close();
}
