package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_POINTER;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/**
 * An eventfd: the kick and call notifications of a virtqueue. {@link #signal()} adds one; {@link #drain()}
 * reads and resets the counter. Non-blocking by default.
 */
public final class EventFd extends Fd {
    private static final MethodHandle EVENTFD =
            Native.downcall("eventfd", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT));
    private static final int EFD_CLOEXEC = 0x80000, EFD_NONBLOCK = 0x800;

    /** 8 bytes per thread for the counter, so signalling allocates nothing. */
    private static final ThreadLocal<MemorySegment> WORD =
            ThreadLocal.withInitial(() -> Arena.global().allocate(ValueLayout.JAVA_LONG));

    private EventFd(int fd) {
        super(fd);
    }

    public static EventFd create() {
        try {
            return new EventFd(Native.check((int) EVENTFD.invokeExact(Native.errnoState(), 0,
                    EFD_CLOEXEC | EFD_NONBLOCK), "eventfd"));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** Wraps an eventfd received from a peer (its flags are whatever the peer set). */
    public static EventFd adopt(int fd) {
        return new EventFd(fd);
    }

    /** Adds one to the counter, waking whoever polls it. */
    public void signal() {
        MemorySegment w = WORD.get();
        w.set(ValueLayout.JAVA_LONG, 0, 1L);
        write(w); // -1 (EAGAIN) only if the counter would overflow: the reader is already woken
    }

    /** Reads and clears the counter; 0 if nothing was signalled (non-blocking). */
    public long drain() {
        MemorySegment w = WORD.get();
        long n = read(w);
        return n == 8 ? w.get(ValueLayout.JAVA_LONG, 0) : 0;
    }
}
