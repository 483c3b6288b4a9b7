// A typed handle of a registered op, for the C++ code that calls other plinio ops through
// the dispatcher (autograd formulas, composite ops). Look it up once (a function-local
// static at the call site): the lookup costs more than the call.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace plinio {

template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

}  // namespace plinio
