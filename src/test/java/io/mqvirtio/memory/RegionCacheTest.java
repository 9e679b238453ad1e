package io.mqvirtio.memory;

import static org.assertj.core.api.Assertions.assertThat;

import java.lang.foreign.Arena;
import java.util.List;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;
import net.jqwik.api.lifecycle.AfterProperty;

/**
 * The remembered region never changes an answer: for any sequence of ranges (at and across the edges of adjacent
 * regions, of a region that ends at 2^64, of gaps; empty, huge and wrapping lengths), {@link RegionCache} gives
 * exactly what {@link GuestMemory#hostAddress} gives, whatever region it remembered from the range before.
 */
class RegionCacheTest {
    private final Arena arena = Arena.ofShared();
    private final GuestMemory memory = GuestMemory.of(List.of(
            region(0, 0x1000), region(0x1000, 0x1000), // adjacent: a range across both is refused
            region(0x10000, 0x8000), region(-0x1000, 0x1000))); // the last page of the address space

    private MemoryRegion region(long gpa, long size) {
        return new MemoryRegion(gpa, size, 0x7f00_0000_0000L + gpa, 0, arena.allocate(size, 4096));
    }

    @AfterProperty
    void close() {
        arena.close();
    }

    @Provide
    Arbitrary<long[]> ranges() {
        Arbitrary<Long> edge = Arbitraries.of(0L, 0x1000L, 0x2000L, 0x10000L, 0x18000L, -0x1000L, -1L, 0x8000L);
        Arbitrary<Long> addr = edge.flatMap(e -> Arbitraries.longs().between(-24, 24).map(d -> e + d));
        Arbitrary<Long> len = Arbitraries.oneOf(Arbitraries.of(0L, 1L, 12L, 76L, 0x1000L, 0x8000L, 0xffff_ffffL, -1L,
                Long.MIN_VALUE), Arbitraries.longs().between(0, 0x2000));
        return addr.flatMap(a -> len.map(l -> new long[] {a, l})).list().ofMinSize(1).ofMaxSize(40)
                .map(l -> l.stream().flatMapToLong(java.util.Arrays::stream).toArray());
    }

    @Property(tries = 500)
    void answersAsTheTableDoes(@ForAll("ranges") long[] ranges) {
        RegionCache cache = new RegionCache(memory);
        for (int i = 0; i < ranges.length; i += 2) {
            long addr = ranges[i];
            long len = ranges[i + 1];
            assertThat(cache.hostAddress(addr, len)).as("0x%x+0x%x", addr, len)
                    .isEqualTo(memory.hostAddress(addr, len));
        }
    }

    @Property(tries = 50)
    void anEmptyTableHasNothing(@ForAll("ranges") long[] ranges) {
        RegionCache cache = new RegionCache(GuestMemory.EMPTY);
        for (int i = 0; i < ranges.length; i += 2) {
            assertThat(cache.hostAddress(ranges[i], ranges[i + 1])).isZero();
        }
    }
}
