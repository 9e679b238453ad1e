package io.mqvirtio.fuzz;

import static io.mqvirtio.virtio.SplitRing.*;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.MemoryRegion;
import io.mqvirtio.virtio.DescriptorChain;
import io.mqvirtio.virtio.SplitDeviceRing;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * What the session fuzzer found (docs/fuzzing.md): a frontend may give a memory region a guest-physical base that
 * is not aligned like its mapping (here: odd). An indirect table at a 16-byte-aligned guest address then lies
 * misaligned in the backend's mapping, and reading its descriptors with aligned layouts threw
 * IllegalArgumentException out of {@link SplitDeviceRing#pop} (which a worker does not expect). The chain is valid and
 * must pop.
 */
class MisalignedIndirectTableTest {
    static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final long BASE = 0x4000_0001L; // the region's guest base: odd
    static final int SIZE = 8;

    @Test
    void indirectTableMisalignedInOurMappingPops() {
        long bytes = 64 << 10;
        try (MemFd fd = MemFd.create("mqv-misaligned", bytes);
             Mmap driver = Mmap.shared(fd, 0, bytes);
             Mmap device = Mmap.shared(fd, 0, bytes)) {
            MemorySegment d = driver.segment();
            GuestMemory guest = GuestMemory.of(List.of(new MemoryRegion(BASE, bytes, d.address(), 0, device.segment())));
            // The ring's parts at page offsets, so they are aligned in the mapping (their guest addresses are odd).
            long descOff = 0x1000, availOff = 0x2000, usedOff = 0x3000;
            long tableGpa = 0x4000_4010L;     // 16-byte aligned guest address...
            long tableOff = tableGpa - BASE;  // ...at offset 0x400f in the mapping
            desc(d, descOff, tableGpa, 32, DESC_F_INDIRECT, 0);
            desc(d, tableOff, BASE + 0x5000, 100, DESC_F_NEXT, 1);
            desc(d, tableOff + 16, BASE + 0x6000, 200, DESC_F_WRITE, 0);
            d.set(LE16, availOff + AVAIL_RING, (short) 0);
            d.set(LE16, availOff + AVAIL_IDX, (short) 1);

            SplitDeviceRing q = new SplitDeviceRing(guest, SIZE, guest.gpa(BASE + descOff, descTableBytes(SIZE)),
                    guest.gpa(BASE + availOff, availBytes(SIZE)), guest.gpa(BASE + usedOff, usedBytes(SIZE)),
                    VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC), 0, 0);
            DescriptorChain c = new DescriptorChain(16);
            assertThat(q.pop(c)).isTrue();
            assertThat(c.isIndirect()).isTrue();
            assertThat(c.count()).isEqualTo(2);
            assertThat(c.readableBytes()).isEqualTo(100);
            assertThat(c.writableBytes()).isEqualTo(200);
            assertThat(c.guestAddress(1)).isEqualTo(BASE + 0x6000);
            assertThat(q.isBroken()).isFalse();
        }
    }

    private static void desc(MemorySegment s, long off, long gpa, int len, int flags, int next) {
        s.set(LE64, off, gpa);
        s.set(LE32, off + 8, len);
        s.set(LE16, off + 12, (short) flags);
        s.set(LE16, off + 14, (short) next);
    }
}
