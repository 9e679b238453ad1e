package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_LONG;
import static io.mqvirtio.linux.Native.C_POINTER;
import static io.mqvirtio.linux.Native.SIZE_T;

import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * A shared mapping of a file ({@code mmap(MAP_SHARED)}), unmapped on close. The segment is sized exactly to the
 * mapping, so no access through it can leave the mapped range.
 *
 * <p>Closing while another thread still reads the segment would be a use-after-unmap; owners of a mapping close it
 * only after every user has stopped (the device's control thread does so after pausing its workers).
 */
public final class Mmap implements AutoCloseable {
    private static final MethodHandle MMAP = Native.downcall("mmap",
            FunctionDescriptor.of(C_POINTER, C_POINTER, C_POINTER, SIZE_T, C_INT, C_INT, C_INT, C_LONG));
    private static final MethodHandle MUNMAP =
            Native.downcall("munmap", FunctionDescriptor.of(C_INT, C_POINTER, C_POINTER, SIZE_T));

    static final int PROT_READ = 1, PROT_WRITE = 2, MAP_SHARED = 1, MAP_FAILED_ADDR = -1;

    private final MemorySegment segment;
    private final AtomicBoolean closed = new AtomicBoolean();

    private Mmap(MemorySegment segment) {
        this.segment = segment;
    }

    /** Maps {@code length} bytes of {@code fd} from {@code offset}, shared, readable and writable. */
    public static Mmap shared(Fd fd, long offset, long length) {
        if (length <= 0) {
            throw new IllegalArgumentException("mmap length must be positive: " + length);
        }
        if (offset < 0 || (offset & 4095) != 0) {
            throw new IllegalArgumentException("mmap offset must be page aligned and non-negative: " + offset);
        }
        try {
            MemorySegment p = (MemorySegment) MMAP.invokeExact(Native.errnoState(), MemorySegment.NULL, length,
                    PROT_READ | PROT_WRITE, MAP_SHARED, fd.fd(), offset);
            if (p.address() == -1L) {
                throw new ErrnoException("mmap", Native.lastErrno());
            }
            return new Mmap(p.reinterpret(length));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    public MemorySegment segment() {
        return segment;
    }

    public long size() {
        return segment.byteSize();
    }

    @Override
    public void close() {
        if (closed.compareAndSet(false, true)) {
            try {
                Native.check((int) MUNMAP.invokeExact(Native.errnoState(), segment, segment.byteSize()), "munmap");
            } catch (Throwable t) {
                throw Native.rethrow(t);
            }
        }
    }
}
