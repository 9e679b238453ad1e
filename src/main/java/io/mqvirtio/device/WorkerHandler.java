package io.mqvirtio.device;

/**
 * What a device plugs into a {@link Worker}: the role of an Aeron agent. The worker thread calls it, and only that
 * thread: {@link #ready} for each descriptor the handler registered that became ready, then {@link #work} once per
 * round. Nothing here is shared with another thread; commands from a control thread reach the handler through
 * {@link Worker#call}.
 */
public interface WorkerHandler {
    /** {@link #work}'s answer: more may be waiting, so the worker must not sleep now. */
    int MORE = 1;
    /** {@link #work}'s answer: this round moved something (a poll window starts or goes on). */
    int MOVED = 2;

    /**
     * A descriptor registered with {@code token} ({@link Worker#register}) is ready: {@code events} are the epoll
     * bits it reported (EPOLLIN, EPOLLOUT, ...).
     */
    void ready(long token, int events);

    /**
     * One round of work. {@code poll}: this round polls (the worker will look again soon without being woken), so
     * notifications from the other side may stay off; otherwise the handler re-enables them before it reports no
     * more work, re-checking for work that came meanwhile. Returns {@link #MORE} and/or {@link #MOVED}.
     */
    int work(boolean poll);
}
