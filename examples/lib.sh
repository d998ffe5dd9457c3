# Shared by the toy recipes (source it after setting DATA, RUN, U and TRAIN).
# train NAME ARGS...: fairseq-train on $DATA with $TRAIN and ARGS into $RUN/NAME, log $RUN/NAME.log.
# Skipped when that run finished ("done training" in its log); an interrupted run resumes from its
# checkpoint_last.pt (fairseq's default), so a stopped recipe can simply be started again.
train() {
  local name=$1; shift
  grep -qs "done training" "$RUN/$name.log" && [ -f "$RUN/$name/checkpoint_best.pt" ] && return 0
  echo "== train $name"
  fairseq-train "$DATA" --user-dir "$U" $TRAIN --save-dir "$RUN/$name" "$@" >> "$RUN/$name.log" 2>&1
  grep -E "done training" "$RUN/$name.log"
}
