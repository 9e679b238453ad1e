package io.mqvirtio.memory;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.FileSize;
import io.mqvirtio.linux.Mmap;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;

/**
 * Guest memory that a peer shared as file descriptors (vhost-user SET_MEM_TABLE / ADD_MEM_REG), mapped into this
 * process. Owns the mappings: {@link #close()} unmaps them, which the owner does only once nothing reads the
 * {@link GuestMemory} any more.
 *
 * <p>Each region is mapped from offset 0 of its fd through {@code mmap_offset + size}, and sliced: this works for
 * any page size behind the fd (hugetlbfs included). An offset and size that reach past the end of the file are
 * refused before mapping: touching such a mapping would raise SIGBUS.
 */
public final class MappedMemory implements AutoCloseable {
    /** A region as the peer described it. */
    public record Spec(long guestPhysAddr, long size, long userAddr, long mmapOffset) {}

    private record Mapped(MemoryRegion region, Mmap mapping) {}

    private final List<Mapped> mapped;
    private final GuestMemory memory;

    private MappedMemory(List<Mapped> mapped) {
        this.mapped = mapped;
        this.memory = GuestMemory.of(mapped.stream().map(Mapped::region).toList());
        checkUserAddresses(memory.regions());
    }

    /**
     * Frontend-virtual ranges must not overlap either: ring addresses are translated through them, and two regions
     * claiming the same frontend address would make that translation ambiguous.
     */
    private static void checkUserAddresses(List<MemoryRegion> regions) {
        List<MemoryRegion> r = new ArrayList<>(regions);
        r.sort(Comparator.comparing(MemoryRegion::userAddr, Long::compareUnsigned));
        for (int i = 1; i < r.size(); i++) {
            MemoryRegion a = r.get(i - 1), b = r.get(i);
            if (Long.compareUnsigned(b.userAddr(), a.userAddr() + a.size() - 1) <= 0) {
                throw new GuestMemoryException("memory regions' frontend addresses overlap: uva 0x" + Long.toHexString(a.userAddr())
                        + "+0x" + Long.toHexString(a.size()) + " and 0x" + Long.toHexString(b.userAddr()));
            }
        }
    }

    public static final MappedMemory EMPTY = new MappedMemory(List.of());

    public GuestMemory memory() {
        return memory;
    }

    /**
     * Maps one region; the fd is only borrowed (the mapping keeps the memory alive on its own). On success the
     * mapping is added to {@code owned}; on any failure nothing stays mapped.
     */
    public static MemoryRegion map(Spec s, Fd fd, List<Mmap> owned) {
        long end = mappingBytes(s, fd);
        Mmap m;
        try {
            m = Mmap.shared(fd, 0, end);
        } catch (ErrnoException e) {
            throw new GuestMemoryException("mapping a memory region of 0x" + Long.toHexString(end) + " bytes: " + e.getMessage());
        }
        try {
            MemoryRegion r = new MemoryRegion(s.guestPhysAddr(), s.size(), s.userAddr(), s.mmapOffset(),
                    m.segment().asSlice(s.mmapOffset(), s.size()));
            owned.add(m);
            return r;
        } catch (RuntimeException e) {
            m.close(); // e.g. a range that wraps the address space: refused after mapping, so unmap here
            throw e;
        }
    }

    /** Maps a whole table; on any error nothing stays mapped. */
    public static MappedMemory of(List<Spec> specs, List<Fd> fds) {
        if (specs.size() != fds.size()) {
            throw new GuestMemoryException(specs.size() + " memory regions but " + fds.size() + " file descriptors");
        }
        List<Mapped> out = new ArrayList<>();
        try {
            for (int i = 0; i < specs.size(); i++) {
                List<Mmap> one = new ArrayList<>(1);
                MemoryRegion r = map(specs.get(i), fds.get(i), one);
                out.add(new Mapped(r, one.get(0)));
            }
            return new MappedMemory(out);
        } catch (RuntimeException e) {
            out.forEach(m -> m.mapping().close());
            throw e;
        }
    }

    /** This table plus one region (the new object owns all mappings; this one must not be closed after). */
    public MappedMemory plus(Spec s, Fd fd) {
        List<Mmap> one = new ArrayList<>(1);
        MemoryRegion r = map(s, fd, one);
        List<Mapped> l = new ArrayList<>(mapped);
        l.add(new Mapped(r, one.get(0)));
        try {
            return new MappedMemory(l);
        } catch (RuntimeException e) {
            one.get(0).close();
            throw e;
        }
    }

    /**
     * This table without the region at {@code gpa} of {@code size}: returns the new table; the removed mapping is
     * handed back through {@code removed} for the caller to close once no worker uses it.
     */
    public MappedMemory minus(long gpa, long size, List<AutoCloseable> removed) {
        List<Mapped> l = new ArrayList<>();
        for (Mapped m : mapped) {
            if (m.region().guestPhysAddr() == gpa && m.region().size() == size) {
                removed.add(m.mapping());
            } else {
                l.add(m);
            }
        }
        if (l.size() == mapped.size()) {
            throw new GuestMemoryException("no memory region at gpa 0x" + Long.toHexString(gpa) + " of size 0x"
                    + Long.toHexString(size));
        }
        return new MappedMemory(l);
    }

    /** Unmaps this table's mappings that {@code kept} does not share (a new table that is not going to be used). */
    public void closeExcept(MappedMemory kept) {
        for (Mapped m : mapped) {
            if (!kept.mapped.contains(m)) {
                m.mapping().close();
            }
        }
    }

    /**
     * The bytes mapping region {@code s} of {@code fd} takes (from offset 0 of the file through {@code mmap_offset +
     * size}, see the class comment), after every check that can be made before mapping: a size of 0 or beyond 2^63,
     * an offset and size that overflow, a range past the end of the file. What a caller reserves before it maps.
     */
    public static long mappingBytes(Spec s, Fd fd) {
        if (s.size() <= 0) {
            throw new GuestMemoryException("memory region of size " + Long.toUnsignedString(s.size()));
        }
        if (s.mmapOffset() < 0 || s.mmapOffset() + s.size() < 0) {
            throw new GuestMemoryException("memory region's mmap offset 0x" + Long.toHexString(s.mmapOffset()) + " + size 0x"
                    + Long.toHexString(s.size()) + " overflows");
        }
        long fileSize;
        try {
            fileSize = FileSize.of(fd);
        } catch (ErrnoException e) {
            throw new GuestMemoryException("memory region fd cannot be mapped (not a file: " + e.getMessage() + ")");
        }
        long end = s.mmapOffset() + s.size();
        if (end > fileSize) {
            throw new GuestMemoryException("memory region reaches byte 0x" + Long.toHexString(end) + " of a file of 0x"
                    + Long.toHexString(fileSize) + " bytes");
        }
        return end;
    }

    /** The bytes this table has mapped. */
    public long mappedBytes() {
        long n = 0;
        for (Mapped m : mapped) {
            n += m.mapping().size();
        }
        return n;
    }

    public int regionCount() {
        return mapped.size();
    }

    @Override
    public void close() {
        for (Mapped m : mapped) {
            m.mapping().close();
        }
    }
}
