package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_POINTER;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.util.Objects;

/**
 * An epoll instance: how a queue-pair worker waits on its kick eventfds and its port's fd at once.
 *
 * <p>{@link #await} fills an events buffer allocated once at creation; {@link #events(int)} and {@link #data(int)}
 * read entry {@code i} of the last wait. One thread awaits; any thread may {@link #add}/{@link #modify}/{@link
 * #remove} (each uses its own thread's scratch event), as epoll itself allows.
 */
public final class Epoll extends Fd {
    private static final MethodHandle EPOLL_CREATE1 =
            Native.downcall("epoll_create1", FunctionDescriptor.of(C_INT, C_POINTER, C_INT));
    private static final MethodHandle EPOLL_CTL =
            Native.downcall("epoll_ctl", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT, C_INT, C_POINTER));
    private static final MethodHandle EPOLL_WAIT =
            Native.downcall("epoll_wait", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_POINTER, C_INT, C_INT));
    private static final MethodHandle EPOLL_WAIT_UNCAPTURED = Native.downcallUncaptured("epoll_wait",
            FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_POINTER, C_INT, C_INT));

    /** Event bits, from {@code <sys/epoll.h>} (epoll_ctl(2)). */
    public static final int EPOLLIN = 0x001, EPOLLPRI = 0x002, EPOLLOUT = 0x004, EPOLLERR = 0x008,
            EPOLLHUP = 0x010, EPOLLRDHUP = 0x2000, EPOLLONESHOT = 1 << 30, EPOLLET = 1 << 31;

    private static final int EPOLL_CLOEXEC = 0x80000, EPOLL_CTL_ADD = 1, EPOLL_CTL_DEL = 2, EPOLL_CTL_MOD = 3;

    /*
     * struct epoll_event (<sys/epoll.h>, epoll_wait(2)) is declared __attribute__((packed)) on x86_64:
     * uint32_t events at 0, epoll_data_t (a 64-bit union) at offset 4, 12 bytes in all. Hence the unaligned
     * accessor for the data word: a naturally aligned layout would put it at 8 and read garbage.
     */
    static final long EVENT_SIZE = 12, EVENTS_OFFSET = 0, DATA_OFFSET = 4;
    private static final ValueLayout.OfLong DATA = ValueLayout.JAVA_LONG_UNALIGNED;
    private static final ValueLayout.OfInt EVENTS = ValueLayout.JAVA_INT_UNALIGNED;

    /** One scratch event per thread for epoll_ctl, so registering allocates nothing after the first call. */
    private static final ThreadLocal<MemorySegment> CTL_EVENT =
            ThreadLocal.withInitial(() -> Arena.global().allocate(EVENT_SIZE, 8));

    private final int capacity;
    /**
     * The events buffer. An automatic arena frees it once this object is unreachable: closing it explicitly
     * could race with a thread still inside epoll_wait (the linker holds the segment during the call).
     */
    private final MemorySegment buffer;
    private int ready;

    private Epoll(int fd, int capacity) {
        super(fd);
        this.capacity = capacity;
        this.buffer = Arena.ofAuto().allocate(EVENT_SIZE * capacity, 8);
    }

    /** A new epoll instance whose {@link #await} reports at most {@code capacity} events per call. */
    public static Epoll create(int capacity) {
        if (capacity <= 0) {
            throw new IllegalArgumentException("epoll capacity must be positive: " + capacity);
        }
        try {
            int fd = Native.check((int) EPOLL_CREATE1.invokeExact(Native.errnoState(), EPOLL_CLOEXEC), "epoll_create1");
            return new Epoll(fd, capacity);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** Watches {@code fd} for {@code events}; {@code userData} comes back in {@link #data(int)}. */
    public void add(Fd fd, int events, long userData) {
        add(fd.fd(), events, userData);
    }

    public void add(int fd, int events, long userData) {
        ctl(EPOLL_CTL_ADD, fd, events, userData, "epoll_ctl(EPOLL_CTL_ADD)");
    }

    public void modify(Fd fd, int events, long userData) {
        modify(fd.fd(), events, userData);
    }

    public void modify(int fd, int events, long userData) {
        ctl(EPOLL_CTL_MOD, fd, events, userData, "epoll_ctl(EPOLL_CTL_MOD)");
    }

    public void remove(Fd fd) {
        remove(fd.fd());
    }

    public void remove(int fd) {
        // Since Linux 2.6.9 the event argument of EPOLL_CTL_DEL is ignored, but it must still be a valid pointer.
        ctl(EPOLL_CTL_DEL, fd, 0, 0, "epoll_ctl(EPOLL_CTL_DEL)");
    }

    private void ctl(int op, int fd, int events, long userData, String call) {
        MemorySegment ev = CTL_EVENT.get();
        ev.set(EVENTS, EVENTS_OFFSET, events);
        ev.set(DATA, DATA_OFFSET, userData);
        try {
            Native.check((int) EPOLL_CTL.invokeExact(Native.errnoState(), fd(), op, fd, ev), call);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * Waits up to {@code timeoutMillis} (-1: forever, 0: just poll) and returns how many events are ready; 0 on
     * timeout or when a signal interrupted the wait (the caller's loop simply waits again).
     */
    public int await(int timeoutMillis) {
        try {
            // Without errno capture: a worker waits here at each round, and the capture costs an object per call
            int n = (int) EPOLL_WAIT_UNCAPTURED.invokeExact(fd(), buffer, capacity, timeoutMillis);
            if (n < 0) {
                // Asked again, capturing errno, without waiting (a signal ended the wait, or a real failure)
                n = (int) EPOLL_WAIT.invokeExact(Native.errnoState(), fd(), buffer, capacity, 0);
            }
            if (n < 0) {
                ready = 0;
                int e = Native.lastErrno();
                if (e == ErrnoException.EINTR) {
                    return 0;
                }
                throw new ErrnoException("epoll_wait", e);
            }
            ready = n;
            return n;
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** The event bits of entry {@code i} of the last {@link #await}. */
    public int events(int i) {
        return buffer.get(EVENTS, EVENT_SIZE * Objects.checkIndex(i, ready) + EVENTS_OFFSET);
    }

    /** The user data of entry {@code i} of the last {@link #await}, as given to {@link #add}. */
    public long data(int i) {
        return buffer.get(DATA, EVENT_SIZE * Objects.checkIndex(i, ready) + DATA_OFFSET);
    }

    public int capacity() {
        return capacity;
    }
}
