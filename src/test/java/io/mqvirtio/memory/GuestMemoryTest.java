package io.mqvirtio.memory;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

class GuestMemoryTest {
    private final Arena arena = Arena.ofShared();

    @AfterEach
    void close() {
        arena.close();
    }

    private MemoryRegion region(long gpa, long size, long uva) {
        return new MemoryRegion(gpa, size, uva, 0, arena.allocate(size, 4096));
    }

    @Test
    void translatesInsideRegions() {
        MemoryRegion low = region(0, 0x10000, 0x7f00_0000_0000L);
        MemoryRegion high = region(0x100000, 0x8000, 0x7f00_1000_0000L);
        GuestMemory m = GuestMemory.of(List.of(high, low));
        m.gpa(0x10, 4).fill((byte) 7);
        assertThat(low.segment().get(java.lang.foreign.ValueLayout.JAVA_BYTE, 0x12)).isEqualTo((byte) 7);
        assertThat(m.gpa(0x100000 + 0x7ff0, 0x10).address()).isEqualTo(high.segment().address() + 0x7ff0);
        assertThat(m.uva(0x7f00_1000_0000L + 8, 8).address()).isEqualTo(high.segment().address() + 8);
        assertThat(m.uvaToGpa(0x7f00_1000_0010L)).isEqualTo(0x100010);
        assertThat(m.hostAddress(0xfff0, 0x10)).isEqualTo(low.segment().address() + 0xfff0);
    }

    @Test
    void refusesRangesOutsideOrAcrossRegions() {
        MemoryRegion a = region(0, 0x1000, 0x10000);
        MemoryRegion b = region(0x1000, 0x1000, 0x11000); // adjacent: a range across both is still refused
        GuestMemory m = GuestMemory.of(List.of(a, b));
        assertThatThrownBy(() -> m.gpa(0xff0, 0x20)).isInstanceOf(GuestMemoryException.class)
                .hasMessageContaining("guest-physical range 0xff0+0x20");
        assertThatThrownBy(() -> m.gpa(0x2000, 1)).isInstanceOf(GuestMemoryException.class);
        assertThatThrownBy(() -> m.gpa(-16, 32)).isInstanceOf(GuestMemoryException.class);
        assertThatThrownBy(() -> m.gpa(0x10, -1)).isInstanceOf(GuestMemoryException.class);
        assertThatThrownBy(() -> m.uva(0x11ff8, 16)).isInstanceOf(GuestMemoryException.class);
        assertThatThrownBy(() -> m.uvaToGpa(0x5)).isInstanceOf(GuestMemoryException.class);
        assertThat(m.hostAddress(0x1ff8, 16)).isZero();
        assertThat(GuestMemory.EMPTY.hostAddress(0, 1)).isZero();
    }

    @Test
    void refusesOverlappingAndWrappingRegions() {
        assertThatThrownBy(() -> GuestMemory.of(List.of(region(0, 0x2000, 0), region(0x1000, 0x1000, 0x5000))))
                .isInstanceOf(GuestMemoryException.class).hasMessageContaining("overlap");
        MemorySegment s = arena.allocate(0x1000);
        assertThatThrownBy(() -> new MemoryRegion(-0x800, 0x1000, 0, 0, s)).isInstanceOf(GuestMemoryException.class);
        assertThatThrownBy(() -> new MemoryRegion(0, 0x1000, -0x800, 0, s)).isInstanceOf(GuestMemoryException.class);
        // a region that ends exactly at 2^64 is fine
        new MemoryRegion(-0x1000, 0x1000, 0, 0, s);
    }

    @Test
    void addAndRemoveRegions() {
        MemoryRegion a = region(0, 0x1000, 0x10000);
        MemoryRegion b = region(0x4000, 0x1000, 0x20000);
        GuestMemory m = GuestMemory.EMPTY.with(a).with(b);
        assertThat(m.regionCount()).isEqualTo(2);
        assertThat(m.find(0x4000, 0x1000)).isSameAs(b);
        GuestMemory less = m.without(b);
        assertThat(less.regionCount()).isEqualTo(1);
        assertThatThrownBy(() -> less.gpa(0x4000, 1)).isInstanceOf(GuestMemoryException.class);
        assertThat(m.gpa(0x4000, 1)).isNotNull(); // the old table is unchanged
    }

    /** Any (address, length) either translates to a slice wholly inside one region, or is refused. */
    @Property(tries = 2000)
    void everyTranslationStaysInside(@ForAll long gpa, @ForAll long len) {
        MemoryRegion a = region(0x1000, 0x3000, 0x10000);
        GuestMemory m = GuestMemory.of(List.of(a));
        long near = 0x1000 + Math.floorMod(gpa, 0x4000) - 0x800; // bias toward the edges
        long l = Math.floorMod(len, 0x4000);
        for (long addr : new long[] {gpa, near}) {
            for (long length : new long[] {len, l}) {
                try {
                    MemorySegment s = m.gpa(addr, length);
                    assertThat(s.address()).isGreaterThanOrEqualTo(a.segment().address());
                    assertThat(s.address() + s.byteSize()).isLessThanOrEqualTo(a.segment().address() + a.size());
                } catch (GuestMemoryException expected) {
                    boolean inside = Long.compareUnsigned(addr, 0x1000) >= 0 && Long.compareUnsigned(length, 0x3000) <= 0
                            && Long.compareUnsigned(addr - 0x1000, 0x3000 - length) <= 0;
                    assertThat(inside).as("refused 0x%x+0x%x", addr, length).isFalse();
                }
            }
        }
    }
}
