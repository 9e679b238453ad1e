package io.mqvirtio.linux;

import java.lang.foreign.AddressLayout;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.VarHandle;
import java.util.List;

/**
 * The FFM plumbing shared by the classes of this package: looking up libc functions with errno capture, and
 * turning a failed return into an {@link ErrnoException}. Nothing outside {@code io.mqvirtio.linux} calls it.
 */
final class Native {
    static final Linker LINKER = Linker.nativeLinker();
    static final SymbolLookup LIBC = LINKER.defaultLookup();
    static final Linker.Option CAPTURE_ERRNO = Linker.Option.captureCallState("errno");
    private static final MemoryLayout CAPTURE_LAYOUT = Linker.Option.captureStateLayout();
    private static final VarHandle ERRNO = CAPTURE_LAYOUT.varHandle(MemoryLayout.PathElement.groupElement("errno"));

    static final ValueLayout.OfInt C_INT = ValueLayout.JAVA_INT;
    static final ValueLayout.OfLong C_LONG = ValueLayout.JAVA_LONG;
    static final ValueLayout.OfLong SIZE_T = ValueLayout.JAVA_LONG;
    static final java.lang.foreign.AddressLayout C_POINTER = ValueLayout.ADDRESS;

    /** One capture-state buffer per thread: calls on the data path allocate nothing. */
    private static final ThreadLocal<MemorySegment> CAPTURE =
            ThreadLocal.withInitial(() -> Arena.global().allocate(CAPTURE_LAYOUT));

    private static final MethodHandle STRERROR =
            LINKER.downcallHandle(find("strerror"), FunctionDescriptor.of(C_POINTER, C_INT));

    private Native() {}

    static MemorySegment find(String name) {
        return LIBC.find(name).orElseThrow(() -> new UnsatisfiedLinkError("libc has no " + name));
    }

    /**
     * A downcall whose first parameter is the errno capture segment (see {@link #errnoState()}). By this package's
     * convention {@code fd} lists that segment as its first parameter, so the descriptor reads like the handle's
     * type and its {@code invokeExact} call; the linker adds the capture parameter itself, so it is dropped here.
     */
    static MethodHandle downcall(String name, FunctionDescriptor fd) {
        return LINKER.downcallHandle(find(name), withoutCaptureSlot(fd), CAPTURE_ERRNO);
    }

    /**
     * The same downcall without errno capture, for the calls a worker makes at each wake-up: the JDK slices the capture
     * segment at each call (an object, 40 bytes), which C2 removes only where it inlines the whole downcall, and a
     * worker's loop is too large for that. Its caller makes the capturing call again where this one fails (a failed
     * call of those did nothing, and errno is not kept between two downcalls). {@code fd} as for {@link #downcall}.
     */
    static MethodHandle downcallUncaptured(String name, FunctionDescriptor fd) {
        return LINKER.downcallHandle(find(name), withoutCaptureSlot(fd));
    }

    /**
     * A variadic downcall (open, ioctl, fcntl): {@code fixed} is the number of named parameters of the C function,
     * not counting the capture slot.
     */
    static MethodHandle downcallVariadic(String name, FunctionDescriptor fd, int fixed) {
        return LINKER.downcallHandle(find(name), withoutCaptureSlot(fd), CAPTURE_ERRNO,
                Linker.Option.firstVariadicArg(fixed));
    }

    /** {@link #downcallVariadic} without errno capture, as {@link #downcallUncaptured}. */
    static MethodHandle downcallVariadicUncaptured(String name, FunctionDescriptor fd, int fixed) {
        return LINKER.downcallHandle(find(name), withoutCaptureSlot(fd), Linker.Option.firstVariadicArg(fixed));
    }

    /** {@code fd} without its leading capture-segment parameter: the C function's own signature. */
    private static FunctionDescriptor withoutCaptureSlot(FunctionDescriptor fd) {
        List<MemoryLayout> args = fd.argumentLayouts();
        if (args.isEmpty() || !(args.getFirst() instanceof AddressLayout)) {
            throw new IllegalArgumentException("descriptor must start with the errno capture pointer: " + fd);
        }
        MemoryLayout[] rest = args.subList(1, args.size()).toArray(MemoryLayout[]::new);
        return fd.returnLayout()
                .map(r -> FunctionDescriptor.of(r, rest))
                .orElseGet(() -> FunctionDescriptor.ofVoid(rest));
    }

    /** This thread's capture-state segment, to pass as the first argument of a {@link #downcall}. */
    static MemorySegment errnoState() {
        return CAPTURE.get();
    }

    /** The errno the last capturing call on this thread saw. */
    static int lastErrno() {
        return (int) ERRNO.get(CAPTURE.get(), 0L);
    }

    static int check(int ret, String call) {
        if (ret < 0) {
            throw new ErrnoException(call, lastErrno());
        }
        return ret;
    }

    static long check(long ret, String call) {
        if (ret < 0) {
            throw new ErrnoException(call, lastErrno());
        }
        return ret;
    }

    static String strerror(int errno) {
        try {
            MemorySegment s = (MemorySegment) STRERROR.invokeExact(errno);
            return s.reinterpret(256).getString(0);
        } catch (Throwable t) {
            return "errno " + errno;
        }
    }

    /** Rethrows what a MethodHandle invocation threw; native calls throw nothing checked. */
    static RuntimeException rethrow(Throwable t) {
        if (t instanceof RuntimeException r) {
            throw r;
        }
        if (t instanceof Error e) {
            throw e;
        }
        throw new IllegalStateException(t);
    }
}
