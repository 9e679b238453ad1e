package io.mqvirtio.virtio;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import org.junit.jupiter.api.Test;

/** The ring base as vhost-user carries it (vhost-user.rst, "Vring descriptor indices"), both layouts. */
class RingBaseTest {
    @Test
    void splitBasesAreSixteenBits() {
        assertThat(RingBase.decode(0xfffe, false, 256)).isEqualTo(RingBase.split(0xfffe, 0));
        assertThat(RingBase.split(0x1_0005, 3).encode(false)).isEqualTo(5);
        assertThatThrownBy(() -> RingBase.decode(0x1_0000, false, 256)).isInstanceOf(VirtqueueException.class)
                .hasMessageContaining("16 bits");
        assertThatThrownBy(() -> RingBase.decode(-1, false, 256)).isInstanceOf(VirtqueueException.class);
    }

    @Test
    void packedBasesCarryBothIndexesAndWrapCounters() {
        RingBase b = new RingBase(0x123, true, 0x77, false);
        int num = b.encode(true);
        assertThat(num).isEqualTo(0x123 | 0x8000 | 0x77 << 16);
        assertThat(RingBase.decode(Integer.toUnsignedLong(num), true, 1024)).isEqualTo(b);
        RingBase w = new RingBase(5, false, 9, true);
        assertThat(RingBase.decode(Integer.toUnsignedLong(w.encode(true)), true, 16)).isEqualTo(w);
        assertThat(RingBase.PACKED_START.encode(true)).isEqualTo(0x8000_8000);
    }

    @Test
    void packedIndexesBeyondTheRingAreRefused() {
        assertThatThrownBy(() -> RingBase.decode(300, true, 256)).isInstanceOf(VirtqueueException.class)
                .hasMessageContaining("beyond the ring's 256");
        assertThatThrownBy(() -> RingBase.decode(300L << 16, true, 256)).isInstanceOf(VirtqueueException.class);
        assertThatThrownBy(() -> RingBase.decode(1L << 32, true, 256)).isInstanceOf(VirtqueueException.class);
    }
}
