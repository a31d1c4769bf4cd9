// Header hygiene: keepalive_agent.h and keepalive_agent.hpp compile as C++17 with
// -Wall -Wextra -Wpedantic -Werror, each included twice, C header first and last.
#include "keepalive_agent.h"
#include "keepalive_agent.hpp"
#include "keepalive_agent.h"
#include "keepalive_agent.hpp"

#include <type_traits>

static_assert(std::is_same<std::underlying_type<agent_code>::type, std::uint32_t>::value,
              "agent_code is a 32-bit enum in C++");
static_assert(!std::is_copy_constructible<keepalive::Agent>::value, "Agent is move-only");
static_assert(!std::is_copy_assignable<keepalive::Agent>::value, "Agent is move-only");
static_assert(std::is_nothrow_move_constructible<keepalive::Agent>::value, "Agent moves");
static_assert(!std::is_copy_constructible<keepalive::Response>::value, "Response is move-only");
static_assert(std::is_nothrow_move_assignable<keepalive::Response>::value, "Response moves");
static_assert(!std::is_copy_constructible<keepalive::Options>::value, "Options is move-only");
static_assert(std::is_nothrow_move_constructible<keepalive::Options>::value, "Options moves");
static_assert(std::is_base_of<std::runtime_error, keepalive::Error>::value,
              "Error is a std::runtime_error");

extern "C" {
static void c_linkage_callback(void *, agent_code, agent_response *) {}
}

int main() {
    agent_callback cb = c_linkage_callback;
    agent_header h{"x-name", "value"};
    return (cb == nullptr) + (h.name == nullptr) + static_cast<int>(AGENT_CODE_OK);
}
