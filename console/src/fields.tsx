import type { ComponentChildren } from 'preact';

/**
 * The editors' form fields: a label tied to its control by id, and a hint under it that the
 * control names as its description (aria-describedby), so every field reads the same way.
 */

interface TextFieldProps {
  id: string;
  label: ComponentChildren;
  value: string;
  onValue: (value: string) => void;
  /** Said under the field, and read out with it. */
  hint?: ComponentChildren;
  /** A text area of this many rows instead of a one-line input. */
  rows?: number;
  type?: 'text' | 'password' | 'url' | 'datetime-local';
  placeholder?: string;
  autocomplete?: string;
  inputMode?: 'numeric';
  spellcheck?: boolean;
}

/** A labelled text input (or text area, with `rows`), with an optional hint. */
export function TextField({
  id,
  label,
  value,
  onValue,
  hint,
  rows,
  type,
  placeholder,
  autocomplete,
  inputMode,
  spellcheck,
}: TextFieldProps) {
  const hintId = hint === undefined ? undefined : `${id}-hint`;
  return (
    <p>
      <label for={id}>{label}</label>
      {rows === undefined ? (
        <input
          id={id}
          // Preact's types pair each input type with the roles it may take; none is set here.
          type={type as 'text' | undefined}
          value={value}
          placeholder={placeholder}
          autocomplete={autocomplete}
          inputMode={inputMode}
          spellcheck={spellcheck}
          aria-describedby={hintId}
          onInput={(event) => onValue(event.currentTarget.value)}
        />
      ) : (
        <textarea
          id={id}
          rows={rows}
          value={value}
          placeholder={placeholder}
          spellcheck={spellcheck}
          aria-describedby={hintId}
          onInput={(event) => onValue(event.currentTarget.value)}
        />
      )}
      {hint !== undefined && (
        <span id={hintId} class="hint">
          {hint}
        </span>
      )}
    </p>
  );
}

/** A checkbox with its label after it. */
export function CheckField({
  id,
  label,
  checked,
  onChecked,
}: {
  id: string;
  label: ComponentChildren;
  checked: boolean;
  onChecked: (checked: boolean) => void;
}) {
  return (
    <p class="check">
      <input id={id} type="checkbox" checked={checked} onChange={(event) => onChecked(event.currentTarget.checked)} />
      <label for={id}>{label}</label>
    </p>
  );
}

/** One choice among a few, as radio buttons under a label (`name` groups them for the keyboard). */
export function RadioGroup<T extends string>(props: {
  name: string;
  label: ComponentChildren;
  value: T;
  options: { value: T; label: ComponentChildren }[];
  onValue: (value: T) => void;
}) {
  const labelId = `${props.name}-label`;
  return (
    <div role="radiogroup" aria-labelledby={labelId} class="radios">
      <span id={labelId}>{props.label}</span>
      {props.options.map((option) => (
        <label key={option.value}>
          <input type="radio" name={props.name} checked={props.value === option.value} onChange={() => props.onValue(option.value)} />
          {option.label}
        </label>
      ))}
    </div>
  );
}

/** A group of checkboxes, each turning one name of a list on or off (the list keeps the options' order). */
export function CheckGroup(props: {
  name: string;
  legend: ComponentChildren;
  selected: string[];
  options: { name: string; label: ComponentChildren }[];
  onSelected: (selected: string[]) => void;
}) {
  const toggle = (name: string, on: boolean) =>
    props.onSelected(props.options.map((each) => each.name).filter((each) => (each === name ? on : props.selected.includes(each))));
  return (
    <fieldset class="radios">
      <legend>{props.legend}</legend>
      {props.options.map((option) => (
        <label key={option.name}>
          <input
            type="checkbox"
            name={`${props.name}-${option.name}`}
            checked={props.selected.includes(option.name)}
            onChange={(event) => toggle(option.name, event.currentTarget.checked)}
          />
          {option.label}
        </label>
      ))}
    </fieldset>
  );
}
