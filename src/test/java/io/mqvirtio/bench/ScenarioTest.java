package io.mqvirtio.bench;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import org.junit.jupiter.api.Test;

class ScenarioTest {
    @Test
    void scenariosAreNamedByNumberOrLabelInTheOrderGiven() {
        assertThat(Scenario.parseList("11, 6,tap->readv,6"))
                .containsExactly(Scenario.TAP_TO_READV_RING, Scenario.TAP_TO_OURS, Scenario.TAP_TO_READV);
        assertThat(Scenario.parseList("all")).containsExactly(Scenario.values());
    }

    @Test
    void eachTapScenarioIsComparedWithTheSyscallLoopOfItsDirection() {
        assertThat(Scenario.TAP_TO_OURS.reference()).isEqualTo(Scenario.TAP_TO_READV);
        assertThat(Scenario.TAP_TO_READV_RING.reference()).isEqualTo(Scenario.TAP_TO_READV);
        assertThat(Scenario.TAP_TO_READV_RING.isReference()).isFalse();
        assertThat(Scenario.OURS_TO_TAP.reference()).isEqualTo(Scenario.WRITEV_TO_TAP);
        assertThat(Scenario.OURS_TO_OURS.reference()).isEqualTo(Scenario.DPDK_TO_DPDK);
        for (int id = 1; id <= Scenario.values().length; id++) {
            assertThat(Scenario.byId(id).id()).isEqualTo(id);
        }
    }

    @Test
    void anUnknownScenarioIsRefusedWithTheListOfThoseThereAre() {
        assertThatThrownBy(() -> Scenario.parseList("1,12"))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("unknown scenario '12'")
                .hasMessageContaining("use 1.." + Scenario.values().length)
                .hasMessageContaining("11 tap->readv-ring")
                .hasMessageContaining("1 ours->ours");
    }
}
