package io.mqvirtio.memory;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.FileSize;
import io.mqvirtio.linux.Mmap;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;

/**
 * The frontend's dirty-page log for live migration (vhost-user.rst, "Migration"): a bitmap in a file the frontend
 * shares, bit {@code p} for the guest-physical page {@code p} of {@link #PAGE} bytes. The frontend reads and clears
 * bits while we set them, so bits are only ever set, with atomic ORs of whole 64-bit words (bit {@code p} of the
 * bitmap is bit {@code p % 64} of little-endian word {@code p / 64}: the byte layout the protocol describes).
 *
 * <p>Everything about the file is untrusted: its size and offset are checked against the file before mapping (a
 * mapping past the file's end would fault on access), and no page beyond the log is ever marked. The frontend can
 * still shrink the file afterwards: the first mark that faults (SIGBUS) ends marking into this log for good
 * ({@link #faulted()}), on whichever thread it happens, and nobody sees the fault. Workers mark pages through their own
 * {@link DirtyLogCache}; the owner closes the log only once no worker holds it.
 */
public final class DirtyLog implements AutoCloseable {
    /** Bytes per dirty bit (VHOST_LOG_PAGE). */
    public static final long PAGE = 4096;
    /** The largest log mapped: enough for 4 PiB of guest-physical addresses. */
    public static final long MAX_BYTES = 1L << 37;
    private static final VarHandle WORD = ValueLayout.JAVA_LONG.varHandle();

    private final Mmap mapping;
    private final MemorySegment bits;
    private final long words;
    /** An access faulted: the file shrank under us. Nothing is marked any more. */
    private volatile boolean faulted;

    private DirtyLog(Mmap mapping, MemorySegment bits) {
        this.mapping = mapping;
        this.bits = bits;
        this.words = bits.byteSize() / 8;
    }

    /**
     * Maps {@code size} bytes of {@code fd} from {@code offset} (the fd is only borrowed). Refuses, with a message
     * for the frontend, a size or offset that is not a multiple of 8 (the log is made of 64-bit words), an empty or
     * oversized log, and a range past the file's end.
     */
    public static DirtyLog map(Fd fd, long size, long offset) {
        if (size <= 0 || size > MAX_BYTES) {
            throw new GuestMemoryException("dirty log of " + Long.toUnsignedString(size) + " bytes (1.." + MAX_BYTES
                    + " are accepted)");
        }
        if ((size & 7) != 0 || (offset & 7) != 0) {
            throw new GuestMemoryException("dirty log of " + size + " bytes at offset " + Long.toUnsignedString(offset)
                    + ": both must be multiples of 8 (64-bit words)");
        }
        if (offset < 0 || offset + size < 0) {
            throw new GuestMemoryException("dirty log offset 0x" + Long.toHexString(offset) + " + size 0x"
                    + Long.toHexString(size) + " overflows");
        }
        long fileSize;
        try {
            fileSize = FileSize.of(fd);
        } catch (ErrnoException e) {
            throw new GuestMemoryException("dirty log fd cannot be mapped (not a file: " + e.getMessage() + ")");
        }
        if (offset + size > fileSize) {
            throw new GuestMemoryException("dirty log reaches byte 0x" + Long.toHexString(offset + size)
                    + " of a file of 0x" + Long.toHexString(fileSize) + " bytes");
        }
        long start = offset & -4096L;
        Mmap m;
        try {
            m = Mmap.shared(fd, start, offset + size - start);
        } catch (ErrnoException e) {
            throw new GuestMemoryException("mapping a dirty log of 0x" + Long.toHexString(size) + " bytes: " + e.getMessage());
        }
        return new DirtyLog(m, m.segment().asSlice(offset - start, size));
    }

    /** The guest-physical bytes the log covers: addresses below this can be marked. */
    public long coveredBytes() {
        return words * 64 * PAGE;
    }

    /**
     * ORs {@code mask} into word {@code word} of the bitmap, atomically. Returns false, writing nothing, for a word
     * beyond the log.
     */
    boolean or(long word, long mask) {
        if (word < 0 || word >= words || faulted) {
            return false;
        }
        try {
            WORD.getAndBitwiseOr(bits, word * 8, mask);
        } catch (InternalError e) {
            // What the JVM makes of SIGBUS on a mapping. Thrown on, it broke the worker's rings, and on the control
            // thread (a stopping ring flushes its pending marks) it escaped the session's teardown, which then left
            // rings running and the guest's memory mapped after the frontend had gone. The marks are the frontend's
            // own loss; the rings and the session go on.
            faulted = true;
            return false;
        }
        return true;
    }

    /** Whether marking stopped because the frontend shrank the log's file under us. */
    public boolean faulted() {
        return faulted;
    }

    @Override
    public void close() {
        mapping.close();
    }

    @Override
    public String toString() {
        return "DirtyLog[" + bits.byteSize() + " bytes, covers 0x" + Long.toHexString(coveredBytes()) + "]";
    }
}
